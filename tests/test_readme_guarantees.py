"""The README's "Guarantees" table names the tests that prove each promise: every one it names exists.

A promise whose proof was renamed or deleted would otherwise go on being claimed. A cell names test
files by path (``tests/celery/test_guard.py``), by name after a path in the same folder
(``test_duplicates.py``), or a test in a file (``test_amqp.py::test_a_worker_survives_poison``).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_NAMED = re.compile(r"`([\w/]+\.py)(?:::(\w+))?`|`(tests/[\w/]*)/?`")


def _guarantee_rows() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Guarantees\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]


def _named_tests(cell: str) -> list[tuple[Path, str | None]]:
    """The files (and test functions) ``cell`` names, a bare file name taken in the last folder named."""
    folder = ROOT / "tests"
    named = []
    for match in _NAMED.finditer(cell):
        path, test, directory = match.groups()
        if directory:
            folder = ROOT / directory
            named.append((folder, None))
            continue
        file = ROOT / path if "/" in path else folder / path
        folder = file.parent
        named.append((file, test))
    return named


def test_the_table_has_rows_and_each_names_a_test() -> None:
    rows = _guarantee_rows()
    assert len(rows) >= 10
    for row in rows:
        assert _named_tests(row.rsplit("|", 2)[-2]), row[:80]


def test_every_test_the_guarantees_table_names_exists() -> None:
    missing = []
    for row in _guarantee_rows():
        for path, test in _named_tests(row.rsplit("|", 2)[-2]):
            if not path.exists():
                missing.append(str(path.relative_to(ROOT)))
            elif test and not re.search(rf"^(async )?def {test}\b", path.read_text(), re.M):
                missing.append(f"{path.relative_to(ROOT)}::{test}")
    assert not missing, f"named in README's Guarantees but not found: {missing}"
