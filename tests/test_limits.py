"""Every numeric setting and numeric CLI option has one declared range (on its pydantic field:
``castor.settings``, ``castor._limits``): a value out of it stops the process with one line naming the
key, the file and the range, exit 2."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from pydantic.fields import FieldInfo

from castor import InvalidValueError
from castor._limits import OPTIONS, option_range
from castor.cli import main
from castor.settings import Settings, load_settings
from castor.settings._model import Section
from castor.settings._ranges import Range

# key in castor.toml -> (a value out of range, the range's words, a value at its edge that is fine)
BAD_VALUES = {
    "[redis] replicas": ("-1", "an integer from 0 to 64", "64"),
    "[redis] replica_timeout": ("0", "a number above 0 and at most 4", "4"),
    "[broker] visibility_timeout": ("-10", "a number above 0 and at most 2592000", "0.5"),
    "[security] max_argument_bytes": ("0", "an integer from 1 to 67108864", "1"),
    "[security] task_max_age": ("30", "a number from 60 to 31622400", "60"),
    "[tools] default_timeout": ("-5", "a number above 0 and at most 2592000", "2592000"),
    "[tools] max_retries": ("-1", "an integer from 0 to 30", "0"),
    "[tools] retry_backoff": ("-1", "a number from 0 to 3600", "0"),
    "[tools] max_result_bytes": ("100", "an integer from 1024 to 268435456", "1024"),
    "[workers] concurrency": ("0", "an integer from 1 to 1024", "1024"),
    "[workers] heartbeat": ("0", "a number above 0 and at most 3600", "3600"),
    "[workers] outage_deadline": ("-1", "a number above 0 and at most 2592000", "0.1"),
    "[flower] port": ("99999", "an integer from 1 to 65535", "65535"),
    "[coordinator] max_takeovers": ("-1", "an integer from 0 to 1000", "0"),
    "[llm] timeout": ("0", "a number above 0 and at most 2592000", "0.5"),
    "[llm] skew": ("-1", "a number from 0 to 60", "60"),
    "[llm] max_request_bytes": ("100", "an integer from 1024 to 67108864", "1024"),
}
MORE_BAD = {  # not finite, or too large to be meant
    "[tools] default_timeout": "inf",
    "[tools] max_retries": "5000",
    "[broker] visibility_timeout": "nan",
    "[workers] concurrency": "100000",
}


def config(tmp_path: Path, key: str, value: str) -> Path:
    section, name = key[1:].split("] ")
    path = tmp_path / "castor.toml"
    path.write_text(f"[{section}]\n{name} = {value}\n")
    return path


def is_number(annotation: Any) -> bool:
    """``int``, ``float``, ``Seconds | None``: a number, maybe optional or annotated."""
    return annotation in (int, float) or any(is_number(arg) for arg in get_args(annotation))


def numeric_settings() -> dict[str, Range | None]:
    """Every number of every section, and its range (None: it declares none)."""
    found = {}
    for name, field in Settings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, Section):
            for key, inner in section.model_fields.items():
                if get_origin(inner.annotation) is not Mapping and is_number(inner.annotation):
                    found[f"[{name}] {key}"] = Range.of(inner)
    return found


def test_every_numeric_setting_has_a_range() -> None:
    ranges = numeric_settings()
    assert set(BAD_VALUES) == set(ranges)
    assert {key: limit.describe() for key, limit in ranges.items() if limit} == {
        key: words for key, (_, words, _) in BAD_VALUES.items()
    }


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_a_setting_out_of_range_names_the_key_the_file_and_the_range(tmp_path: Path, key: str) -> None:
    value, allowed, edge = BAD_VALUES[key]
    for bad in (value, MORE_BAD.get(key, value)):
        path = config(tmp_path, key, bad)
        with pytest.raises(InvalidValueError) as raised:
            load_settings(path, env={})
        message = str(raised.value)
        assert message.startswith(f"{path}: {key} = ") and message.endswith(f" is out of range: it must be {allowed}")
        assert "\n" not in message
    load_settings(config(tmp_path, key, edge), env={})  # the edge itself is allowed


def test_a_tool_timeout_and_settings_built_in_python_meet_the_same_ranges(tmp_path: Path) -> None:
    path = tmp_path / "castor.toml"
    path.write_text("[tools]\ntimeouts = { rm = 0 }\n")
    with pytest.raises(InvalidValueError, match=r"\[tools\] timeouts.rm = 0 is out of range"):
        load_settings(path, env={})
    with pytest.raises(InvalidValueError, match=r"<defaults>: \[workers\] concurrency = 0 is out of range"):
        Settings(workers={"concurrency": 0})
    with pytest.raises(InvalidValueError, match=r"\[tools\] max_retries = 1.5 is out of range: it must be an integer"):
        Settings(tools={"max_retries": 1.5})
    with pytest.raises(InvalidValueError, match=r"\[workers\] concurrency = 4.0 is out of range: it must be an"):
        Settings(workers={"concurrency": 4.0})


TOOLS = "def rm(path: str) -> str:\n    return path\n"


def good_config(tmp_path: Path, **extra: str) -> Path:
    (tmp_path / "tools.py").write_text(TOOLS)
    path = tmp_path / "castor.toml"
    sections = {"security": [f'secret = "{secrets.token_hex(32)}"'], "tools": [f'import = ["{tmp_path}/tools.py:rm"]']}
    for key, value in extra.items():
        section, name = key.split("__")
        sections.setdefault(section, []).append(f"{name} = {value}")
    path.write_text("".join(f"[{name}]\n" + "\n".join(lines) + "\n" for name, lines in sections.items()))
    return path


PROCESSES = {  # every fleet process and the CLI, given the config: none of them starts
    "worker": ("worker", "--pool", "default", "--config"),
    "coordinator": ("coordinator", "--executor", "celery", "--config"),
    "flower": ("flower", "--config"),
    "run": ("run", "agents.py:main", "--executor", "celery", "--config"),
}


@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_every_process_stops_on_a_bad_value_with_one_line_and_exit_2(
    tmp_path: Path, process: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("CASTOR_CONFIG", "CASTOR_SECRET", "CASTOR_INSECURE_DEV", "CASTOR_REDIS_URL", "CASTOR_STORE"):
        monkeypatch.delenv(var, raising=False)
    for key, value in (("workers__concurrency", "0"), ("flower__port", "99999"), ("tools__max_retries", "-1")):
        path = good_config(tmp_path, **{key: value})
        capsys.readouterr()
        assert main([*PROCESSES[process], str(path)]) == 2
        err = capsys.readouterr().err
        section, name = key.split("__")
        assert err.startswith(f"castor: error: {path}: [{section}] {name} = {value} is out of range")
        assert err.count("\n") == 1


# option -> (command line before it, a value out of range, the range's words)
BAD_OPTIONS = {
    "worker --concurrency": (["worker", "--pool", "p"], "0", "an integer from 1 to 1024"),
    "flower --port": (["flower"], "99999", "an integer from 1 to 65535"),
    "console --port": (["console"], "99999", "an integer from 1 to 65535"),
    "coordinator --concurrency": (["coordinator"], "0", "an integer from 1 to 100000"),
    "coordinator --lease": (["coordinator"], "-1", "a number from 0.5 to 3600"),
    "coordinator --grace": (["coordinator"], "-5", "a number from 0 to 3600"),
    "coordinator --max-takeovers": (["coordinator"], "-1", "an integer from 0 to 1000"),
    "coordinator --context-budget": (["coordinator"], "-1", "an integer from 0 to 10000000"),
    "ps --limit": (["ps"], "0", "an integer from 1 to 1000000"),
    "deadletters --limit": (["deadletters"], "0", "an integer from 1 to 1000000"),
    "ps --watch": (["ps"], "0", "a number from 0.1 to 3600"),
    "budget show --watch": (["budget", "show", "s"], "0", "a number from 0.1 to 3600"),
    "worker --timeout": (["worker", "--pool", "p", "--ping"], "0", "a number from 0.1 to 300"),
    "coordinator --metrics-port": (["coordinator"], "-1", "an integer from 0 to 65535"),
    "worker --metrics-port": (["worker", "--pool", "p"], "70000", "an integer from 0 to 65535"),
    "console --metrics-port": (["console"], "65536", "an integer from 0 to 65535"),
    "mcp --metrics-port": (["mcp"], "-1", "an integer from 0 to 65535"),
}


def test_every_numeric_option_has_a_range() -> None:
    assert set(BAD_OPTIONS) == set(OPTIONS)
    assert {option: option_range(option).describe() for option in OPTIONS} == {
        option: words for option, (_, _, words) in BAD_OPTIONS.items()
    }
    # an option that overrides a setting has the setting's range: declared once, on the setting's field
    assert option_range("worker --concurrency") == Range.of(numeric_field("workers", "concurrency"))
    assert option_range("flower --port") == Range.of(numeric_field("flower", "port"))
    assert option_range("coordinator --max-takeovers") == Range.of(numeric_field("coordinator", "max_takeovers"))


def numeric_field(section: str, key: str) -> FieldInfo:
    model = Settings.model_fields[section].annotation
    assert isinstance(model, type) and issubclass(model, Section)
    return model.model_fields[key]


@pytest.mark.parametrize("option", sorted(BAD_OPTIONS))
def test_a_numeric_option_out_of_range_is_a_usage_error(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    before, value, allowed = BAD_OPTIONS[option]
    flag = option.split()[-1]
    for bad in (value, "many"):
        assert main([*before, flag, bad]) == 2
        err = capsys.readouterr().err
        assert f"argument {flag}: " in err and allowed in err, err


def test_the_insecure_switch_takes_only_a_yes_or_a_no() -> None:
    assert load_settings(None, env={"CASTOR_INSECURE_DEV": "1"}).security.insecure_dev
    assert not load_settings(None, env={"CASTOR_INSECURE_DEV": "off"}).security.insecure_dev
    with pytest.raises(InvalidValueError, match="CASTOR_INSECURE_DEV='maybe' is neither"):
        load_settings(None, env={"CASTOR_INSECURE_DEV": "maybe"})


def test_the_shipped_config_is_within_every_range() -> None:
    root = Path(__file__).resolve().parents[1]
    assert load_settings(root / "config/castor.toml", env={}).security.secret is None  # and it ships no secret
