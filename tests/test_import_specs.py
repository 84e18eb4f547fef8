"""Import specs have one parser (``castor._imports``): the CLI, a config's ``[tools] import``, the workers,
the coordinators and the code stamp read ``file.py:a,b`` alike and refuse a bad spec with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from castor.fleet.workers.main import worker_registry

from castor._code import run_spec
from castor._imports import ImportSpec, parse_spec
from castor.cli import _specs
from castor.errors import ConfigError
from castor.fleet.client import new_run
from castor.fleet.loading import load_agent, load_tools
from castor.settings import Settings, load_settings

SOURCE = "def rm(path: str) -> str:\n    return path\n\ndef ls() -> list:\n    return []\n\nVALUE = 1\n"


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    path = tmp_path / "tools.py"
    path.write_text(SOURCE)
    return path


def test_every_form_parses_to_one_value() -> None:
    assert parse_spec("pkg.mod:f") == ImportSpec("pkg.mod", ("f",))
    assert parse_spec("dir/t.py:a,b") == ImportSpec("dir/t.py", ("a", "b"))
    assert parse_spec("agent.py") == ImportSpec("agent.py")
    assert [str(parse_spec(s)) for s in ("pkg.mod:f", "dir/t.py:a,b", "agent.py")] == [
        "pkg.mod:f", "dir/t.py:a,b", "agent.py",
    ]
    assert [parse_spec(s).is_file for s in ("t.py:f", "dir/t:f", "pkg.mod:f")] == [True, True, False]
    assert [str(one) for one in parse_spec("t.py:a,b").each()] == ["t.py:a", "t.py:b"]
    assert parse_spec("t.py:a").absolute().target == str(Path("t.py").resolve())
    assert parse_spec("pkg.mod:f").absolute() == ImportSpec("pkg.mod", ("f",))


@pytest.mark.parametrize("spec", ["t.py:", ":f", "", "t.py:1x", "t.py:a,,b", "t.py:a b"])
def test_a_malformed_spec_is_one_line(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"^bad import spec .*: expected FILE\.py:FUNC or MODULE:FUNC$"):
        parse_spec(spec)


def test_what_a_tool_or_an_agent_spec_must_name() -> None:
    with pytest.raises(ConfigError, match=r"tool spec 't\.py' names no function"):
        parse_spec("t.py", "tool")
    with pytest.raises(ConfigError, match=r"agent spec 't\.py:a,b' names several functions; give one"):
        parse_spec("t.py:a,b", "agent")
    with pytest.raises(ConfigError, match="must name one function"):
        _ = parse_spec("t.py:a,b").name


def test_the_cli_the_workers_and_the_coordinators_load_alike(tools: Path) -> None:
    assert [name for name, _ in load_tools([f"{tools}:rm,ls"])] == ["rm", "ls"]
    assert [func.__name__ for func in _specs.load_tools([f"{tools}:rm,ls"])] == ["rm", "ls"]
    missing = f"cannot import tool '{tools}:nope': {tools} has no 'nope'"
    with pytest.raises(ConfigError) as by_cli:
        _specs.load_tools([f"{tools}:nope"])
    with pytest.raises(ConfigError) as by_worker:
        worker_registry(Settings(), "default", [f"{tools}:nope"])
    assert str(by_cli.value) == str(by_worker.value) == missing
    with pytest.raises(ConfigError, match=rf"^cannot import agent '{tools}:VALUE': {tools}:VALUE is not a function$"):
        load_agent(f"{tools}:VALUE")  # what a coordinator loads a run's agent with


def test_a_config_tool_spec_may_name_several_functions(tmp_path: Path, tools: Path) -> None:
    config = tmp_path / "castor.toml"
    config.write_text(f"[tools]\nimport = ['{tools}:rm,ls']\n[pools]\nfs = ['rm']\n")
    settings = load_settings(config, env={})
    assert [spec.name for spec in worker_registry(settings, "fs")] == ["rm"]
    assert [spec.name for spec in worker_registry(settings, "default")] == ["ls"]


def test_a_malformed_config_spec_is_refused_when_the_config_loads(tmp_path: Path) -> None:
    config = tmp_path / "castor.toml"
    config.write_text("[tools]\nimport = ['t.py:']\n")
    with pytest.raises(ConfigError, match=r"castor\.toml: \[tools\] import: bad import spec 't\.py:'"):
        load_settings(config, env={})


def test_a_fleet_run_is_stamped_from_the_same_parse(tools: Path) -> None:
    cp = new_run(f"{tools}:ls", [f"{tools}:rm"], destructive=["rm"])
    assert cp.spec is not None and cp.spec == run_spec(f"{tools}:ls", [f"{tools}:rm"], ["rm"])
    with pytest.raises(ConfigError, match="bad import spec"):
        new_run(f"{tools}:", [f"{tools}:rm"])
