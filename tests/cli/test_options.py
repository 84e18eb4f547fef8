"""Global options and spec forms: --db before or after the command, --store, --redis, the environment,
both --destructive forms, agent and tool specs, and the one-line extension point for new commands."""

from __future__ import annotations

import argparse
import json
import sys
import types
import uuid
from pathlib import Path

import pytest

from castor.cli import COMMAND_MODULES, main
from castor.cli._common import store_url

from .conftest import Cli, calls

SEARCH = ("--tool", "tools.py:search")
DELETE = ("--tool", "tools.py:delete_file")


def spec_of(cli: Cli, pid: str) -> dict[str, object]:
    return json.loads(cli("inspect", pid, "--json").out)["spec"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "flags",
    [
        [*SEARCH, *DELETE, "--destructive"],  # bare, right after its --tool
        [*DELETE, "--destructive", *SEARCH],  # bare, then more options
        [*SEARCH, *DELETE, "--destructive", "delete_file"],  # by name
        ["--destructive", "delete_file", *SEARCH, *DELETE],  # by name, before the tool
        [*SEARCH, *DELETE, "--destructive=delete_file"],
        ["--tool", "tools.py:search,delete_file", "--destructive", "delete_file"],  # one spec, two tools
    ],
)
def test_both_destructive_forms_mark_delete_file(cli: Cli, flags: list[str]) -> None:
    result = cli("run", "agents.py:cleanup", *flags)
    assert result.code == 0, result.err
    assert "Status: SUSPENDED_FOR_HITL" in result.out
    assert spec_of(cli, result.pid)["destructive"] == ["delete_file"]


def test_bare_destructive_before_the_agent_does_not_swallow_it(cli: Cli) -> None:
    result = cli("run", *SEARCH, *DELETE, "--destructive", "agents.py:cleanup")
    assert result.code == 0, result.err
    assert "Pending: step 1: delete_file" in result.out


def test_bare_destructive_after_a_multi_tool_spec_marks_all_of_them(cli: Cli) -> None:
    result = cli("run", "agents.py:cleanup", "--tool", "tools.py:search,delete_file", "--destructive")
    assert spec_of(cli, result.pid)["destructive"] == ["search", "delete_file"]
    assert "Pending: step 0: search" in result.out


def test_db_before_and_after_the_command(cli: Cli, workdir: Path) -> None:
    (workdir / "runs").mkdir()
    pid = cli("--db", "runs/state.db", "run", "agents.py:cleanup", *SEARCH, *DELETE, "--destructive").pid
    assert (workdir / "runs" / "state.db").exists() and not (workdir / "castor.db").exists()
    after = cli("ps", "--db", "runs/state.db")
    assert after.out.split()[1] == pid
    assert cli("--db", "runs/state.db", "inspect", pid).code == 0
    approved = cli("approve", pid, "--db", "runs/state.db")
    assert approved.code == 0 and "castor approve " + pid + " --db runs/state.db" in approved.out
    assert cli("ps").out == "No agents found.\n"  # ./castor.db is another store


def test_store_url_and_environment(cli: Cli, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{workdir}/env.db"
    monkeypatch.setenv("CASTOR_STORE", url)
    pid = cli("run", "agents.py:cleanup", *SEARCH, *DELETE, "--destructive").pid
    assert (workdir / "env.db").exists()
    assert cli("ps").out.split()[1] == pid
    assert cli("--store", url, "ps").out.split()[1] == pid
    assert cli("ps", "--store", "memory://").out == "No agents found.\n"
    done = cli("--store", "memory://", "run", "agents.py:cleanup", *SEARCH, *DELETE, "--destructive",
               "--hitl", "approve-all")
    assert "Status: COMPLETED" in done.out
    lost = cli("--store", "memory://", "run", "agents.py:cleanup", *SEARCH, *DELETE, "--destructive")
    assert lost.code == 0 and "the memory:// store ends with this command" in lost.err


def test_store_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    def ns(**kw: str | None) -> argparse.Namespace:
        return argparse.Namespace(**{"db": None, "store": None, "redis": None, **kw})

    monkeypatch.delenv("CASTOR_STORE", raising=False)
    monkeypatch.delenv("CASTOR_REDIS_URL", raising=False)
    assert store_url(ns()) == "sqlite:///castor.db"
    monkeypatch.setenv("CASTOR_REDIS_URL", "redis://r:6379/1")
    assert store_url(ns()) == "redis://r:6379/1"
    monkeypatch.setenv("CASTOR_STORE", "sqlite:///x.db")
    assert store_url(ns()) == "sqlite:///x.db"
    assert store_url(ns(db="/abs/y.db")) == "sqlite:////abs/y.db"
    assert store_url(ns(redis="127.0.0.1:6379/2")) == "redis://127.0.0.1:6379/2"
    assert store_url(ns(store="memory://")) == "memory://"


def test_agent_spec_forms(cli: Cli, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    by_file = cli("run", "agents.py", *SEARCH, *DELETE, "--hitl", "approve-all")  # no :func → main
    assert by_file.code == 0 and by_file.pid.startswith("main-")
    module = f"mod_{uuid.uuid4().hex[:8]}"
    (workdir / f"{module}.py").write_text((workdir / "tools.py").read_text())
    (workdir / "sub").mkdir()
    monkeypatch.chdir(workdir / "sub")  # file specs are relative to here; the module lives one level up
    monkeypatch.syspath_prepend(str(workdir))
    done = cli("run", "../agents.py:cleanup", "--tool", f"{module}:search", "--tool", f"{module}:delete_file")
    assert "Status: COMPLETED" in done.out, done.err
    spec = spec_of(cli, done.pid)
    assert spec["agent"] == f"{workdir}/agents.py:cleanup"  # recorded absolute
    assert spec["tools"] == [f"{module}:search", f"{module}:delete_file"]
    assert len(str(spec["source_hash"])) == 64


def test_a_run_is_resumed_from_another_directory(cli: Cli, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pid = cli("run", "agents.py:cleanup", *SEARCH, *DELETE, "--destructive").pid
    (workdir / "elsewhere").mkdir()
    monkeypatch.chdir(workdir / "elsewhere")
    approved = cli("--db", str(workdir / "castor.db"), "approve", pid, "--hitl", "approve-all")
    assert "Status: COMPLETED" in approved.out, approved.err
    assert calls(workdir) == ["search", "delete_file", "delete_file"]


def test_changed_source_is_reported_on_resume(cli: Cli, workdir: Path) -> None:
    pid = cli("run", "agents.py:cleanup", *SEARCH, *DELETE, "--destructive").pid
    with (workdir / "agents.py").open("a") as f:
        f.write("\n# edited\n")
    result = cli("resume", pid)
    assert result.code == 0 and f"castor: warning: the source of run '{pid}' changed" in result.err


def test_help_and_python_dash_m(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    shown = cli("--help")
    assert shown.code == 0
    for name in ("run", "ps", "inspect", "approve", "reject", "modify", "resume", "fork", "demo"):
        assert name in shown.out
    run_help = cli("run", "--help").out
    assert "--destructive" in run_help and "--db" in run_help and "--hitl" in run_help
    import runpy

    monkeypatch.setattr(sys, "argv", ["castor", "ps"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("castor", run_name="__main__")
    assert exit_info.value.code == 0


def test_a_command_module_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    module = types.ModuleType("castor_test_extra_commands")

    def hello(args: argparse.Namespace) -> int:
        print(f"hello {args.name} db={args.db}")
        return 0

    def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
        parser = subparsers.add_parser("hello")
        parser.add_argument("name")
        parser.set_defaults(handler=hello)

    module.add_commands = add_commands  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr("castor.cli.COMMAND_MODULES", (*COMMAND_MODULES, module.__name__))
    assert main(["hello", "world", "--db", "x.db"]) == 0
    assert capsys.readouterr().out == "hello world db=x.db\n"


def test_a_misspelt_option_in_a_redis_url_is_one_line_naming_the_known_ones(cli: Cli) -> None:
    """redis-py takes a URL's unknown query option as a keyword and failed at the first connection with
    ``AbstractConnection.__init__() got an unexpected keyword argument 'prefx'``."""
    wrong = cli("ps", "--store", "redis://127.0.0.1:6379/11?prefx=nc")
    assert wrong.code == 1
    assert wrong.err.startswith("castor: error: unknown option(s) prefx in the Redis URL (did you mean prefix?); "
                                "Castor's: prefix, allow_eviction, approval_ttl,"), wrong.err
    assert wrong.err.count("\n") == 1


def test_an_agent_file_missing_a_frameworks_package_names_the_extra(cli: Cli, workdir: Path) -> None:
    """A framework example run without its extra said only ``No module named 'smolagents'``."""
    (workdir / "needs.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'smolagents'\", name='smolagents')  # as an import says it\n"
        "async def main():\n    return 1\n"
    )
    failed = cli("run", "needs.py:main")
    assert failed.code == 1
    assert "No module named 'smolagents'" in failed.err
    assert "pip install -e '.[smolagents]'" in failed.err and failed.err.count("\n") == 1, failed.err


def test_every_commands_help_has_a_description_and_no_docstring_markup() -> None:
    """A newcomer's pass over ``--help``: raw ``literal`` marks in run, budget, pools and console, and no
    description at all for worker and flower."""
    from castor.cli import build_parser

    parser = build_parser()
    for name, sub in parser.commands.choices.items():  # type: ignore[attr-defined]
        text = sub.format_help()
        assert sub.description, name
        assert "``" not in text, name


def test_an_unknown_option_gets_the_commands_usage_and_the_nearest_one(cli: Cli) -> None:
    """``castor run ... --tools x`` printed the top level's usage, and no hint of ``--tool``."""
    wrong = cli("run", "agents.py:cleanup", "--tools", "tools.py:search")
    assert wrong.code == 2
    assert wrong.err.startswith("usage: castor run ")
    assert wrong.err.endswith("castor run: error: unrecognized arguments: --tools tools.py:search "
                              "(did you mean --tool?)\n"), wrong.err
