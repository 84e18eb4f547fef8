"""Where Castor leans on a dependency's internals, it does so in one place, and a test here fails when the
dependency changes under it; everywhere else it uses public APIs. (kombu's one patch: tests/celery/
test_broker_loss.py.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pydantic

from castor.checkpoint import SyscallRecord, new_record

ROOT = Path(__file__).resolve().parents[1]
PYDANTIC_TESTED = ((2, 8), (3, 0))  # new_record was written for these pydantic versions (pyproject pins <3)


def _requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]


def test_every_dependency_whose_internals_matter_has_an_upper_bound() -> None:
    for name in ("celery", "kombu", "pydantic", "redis"):
        pins = [r for r in _requirements() if re.match(rf"{name}\b(?!-)", r)]
        assert pins and all("<" in pin for pin in pins), (name, pins)


def test_new_record_sets_every_slot_pydantic_gives_a_model() -> None:
    # new_record builds a SyscallRecord without validation (a fifth of model_construct's cost): it sets the
    # instance's __dict__ and pydantic's per-instance slots itself. A pydantic that adds or renames a slot
    # fails here, not on some record deep in a run.
    major, minor = (int(part) for part in pydantic.VERSION.split(".")[:2])
    low, high = PYDANTIC_TESTED
    assert low <= (major, minor) < high, f"pydantic {pydantic.VERSION}: check castor.checkpoint.new_record"
    assert pydantic.BaseModel.__slots__ == (
        "__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__",
    )
    fields = {"request": {"tool_name": "t", "arguments": {"i": 1}}, "response": 2, "charged": {"api": 1.0}}
    built = new_record(fields["request"], 2, charged={"api": 1.0})
    constructed = SyscallRecord.model_construct(**fields)  # type: ignore[arg-type]
    assert built == constructed == SyscallRecord.model_validate(fields)
    assert built.__dict__.keys() == set(SyscallRecord.model_fields)
    assert built.model_dump() == constructed.model_dump()
    assert built.model_dump_json(exclude_defaults=True) == constructed.model_dump_json(exclude_defaults=True)
    assert built.model_copy(update={"response": 3}).response == 3 and built.response == 2


def test_no_module_reads_argparse_privates_or_turns_the_gc_off_across_the_program() -> None:
    sources = [p for folder in ("castor", "workers", "scheduler") for p in (ROOT / folder).rglob("*.py")]
    for path in sources:
        text = path.read_text()
        assert not re.search(r"\._option_string_actions|parser\._actions|\._subparsers", text), path
        if "gc.disable()" in text:  # the one pause, around a synchronous parse (see its docstring)
            assert path == ROOT / "castor" / "backends" / "redis" / "journal.py", path
