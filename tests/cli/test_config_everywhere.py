"""Every command takes ``--config`` (the fleet's Redis and prefix are the store), ``castor run`` honours
``CASTOR_REDIS_PREFIX``, and a pid not found in ``./castor.db`` hints where else it may be."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from castor.cli import build_parser

from .conftest import RUN, Cli

COMMANDS = [
    ["run", "agents.py:cleanup"], ["resume", "p"], ["fork", "p", "--at-step", "1"], ["ps"], ["inspect", "p"],
    ["approve", "p"], ["reject", "p", "--reason", "r"], ["modify", "p", "--feedback", "f"], ["approvals"],
    ["submit", "agents.py:cleanup"],
    ["cancel", "p"], ["coordinators"], ["budget", "show", "s"], ["deadletters"], ["worker", "--pool", "fs"],
    ["flower"], ["coordinator"], ["pools"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_every_command_takes_config(command: list[str]) -> None:
    for argv in ([*command, "--config", "c.toml"], ["--config", "c.toml", *command]):
        args = build_parser().parse_args(argv)
        assert args.config == "c.toml"


def _config(workdir: Path, redis_url: str, prefix: str) -> Path:
    config = workdir / "fleet.toml"
    config.write_text(f'[redis]\nurl = "{redis_url}"\nprefix = "{prefix}"\n')
    return config


def test_ps_inspect_and_approvals_read_the_fleet_of_config(cli: Cli, workdir: Path, redis_url: str,
                                                           redis_prefix: str) -> None:
    config = str(_config(workdir, redis_url, redis_prefix))
    pid = cli(*RUN, "--store", f"{redis_url}?prefix={redis_prefix}").pid  # suspends at delete_file
    listed = cli("ps", "--config", config)
    assert listed.code == 0 and pid in listed.out, listed.err
    assert pid in cli("--config", config, "inspect", pid).out
    pending = cli("approvals", "--config", config)
    assert pending.code == 0 and pid in pending.out and "delete_file" in pending.out
    assert pid not in cli("ps").out  # ./castor.db is another store


def test_run_honours_castor_redis_prefix(cli: Cli, redis_url: str, redis_prefix: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASTOR_REDIS_URL", redis_url)
    monkeypatch.setenv("CASTOR_REDIS_PREFIX", redis_prefix)
    pid = cli(*RUN).pid
    monkeypatch.delenv("CASTOR_REDIS_PREFIX")
    assert pid in cli("ps", "--store", f"{redis_url}?prefix={redis_prefix}").out  # under the prefix
    assert pid not in cli("ps", "--store", f"{redis_url}?prefix=castor").out  # not under the default one


def test_a_pid_not_in_castor_db_hints_at_the_config(cli: Cli, workdir: Path, redis_url: str,
                                                    redis_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CASTOR_CONFIG", raising=False)
    _config(workdir, redis_url, redis_prefix).rename(workdir / "castor.toml")
    missing = cli("inspect", "nope")
    assert missing.code == 1
    assert missing.err.startswith("castor: error: no run with pid 'nope'; this looked in ./castor.db: for the "
                                  "fleet of castor.toml, add --config castor.toml")
    assert "CASTOR_REDIS_URL" in missing.err and missing.err.count("\n") == 1
    given = cli("inspect", "nope", "--db", "other.db")  # a store named: nothing to hint
    assert given.err == "castor: error: no run with pid 'nope'\n"


def test_an_empty_ps_of_castor_db_says_where_the_fleet_is(cli: Cli, workdir: Path, redis_url: str,
                                                         redis_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``castor ps`` keeps 0.5.1's stdout; on stderr it says that ./castor.db was read and where the runs of
    a config it found are, so a newcomer beside a fleet's castor.toml is not left with "No agents found."."""
    monkeypatch.delenv("CASTOR_CONFIG", raising=False)
    _config(workdir, redis_url, redis_prefix).rename(workdir / "castor.toml")
    pid = cli(*RUN, "--config", "castor.toml").pid  # the fleet's Redis: nothing in ./castor.db
    empty = cli("ps")
    assert empty.code == 0 and empty.out == "No agents found.\n"
    assert empty.err == ("castor: ./castor.db holds no runs: for the fleet of castor.toml, add --config castor.toml "
                         "(or --store redis://HOST:6379/0, or set CASTOR_REDIS_URL)\n")
    assert pid in cli("ps", "--config", "castor.toml").out
    for named in (["--json"], ["--status", "done"]):  # JSON, a filter
        assert cli("ps", *named).err == "", named
    # A store named that is not there (a mistyped --db): said, and not made.
    assert cli("ps", "--db", "castor.db").err == "castor: no store at castor.db (none was made)\n"
    assert not (workdir / "castor.db").exists()


def test_a_watched_empty_ps_says_where_the_fleet_is_once(workdir: Path, redis_url: str, redis_prefix: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``--watch`` the hint is said at the first frame, not at every one (it would fill a log)."""
    monkeypatch.delenv("CASTOR_CONFIG", raising=False)
    _config(workdir, redis_url, redis_prefix).rename(workdir / "castor.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASTOR_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    with subprocess.Popen([sys.executable, "-m", "castor", "ps", "--watch", "0.1"], cwd=workdir, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            frames = 0
            while frames < 4:  # three whole frames printed, the fourth begun
                line = proc.stdout.readline()
                assert line, "the watch ended early"
                frames += line.startswith("--- ")
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0
    assert err.count("holds no runs") == 1, err


def test_approvals_of_an_empty_fleet_point_at_the_calls_waiting_in_castor_db(
    cli: Cli, workdir: Path, redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``castor approvals`` reads the local Redis by default, while ``castor run`` suspends in ./castor.db:
    a newcomer saw an empty table beside three waiting calls. It says where they are, on stderr."""
    import castor.cli._stores as stores

    monkeypatch.delenv("CASTOR_CONFIG", raising=False)
    pid = cli(*RUN).pid  # waits in ./castor.db
    monkeypatch.setattr(stores, "DEFAULT_URL", redis_url)  # "the local Redis": the test's, under its prefix
    monkeypatch.setenv("CASTOR_REDIS_PREFIX", redis_prefix)
    empty = cli("approvals")
    assert empty.code == 0 and pid not in empty.out
    assert empty.err.endswith("./castor.db has 1 call(s) waiting: castor approvals --db castor.db\n"), empty.err
    listed = cli("approvals", "--db", "castor.db")
    assert pid in listed.out and listed.err == ""


def test_commands_that_read_make_no_store(cli: Cli, workdir: Path) -> None:
    """``castor --db /no/such/dir/x.db ps`` made the directory and an empty store, and said "No agents
    found."; a plain ``castor ps`` left a castor.db in any directory. Only ``run`` (and ``budget set``) make one."""
    missing = workdir / "no" / "such" / "x.db"
    listed = cli("--db", str(missing), "ps")
    assert listed.code == 0 and listed.out == "No agents found.\n"
    assert listed.err == f"castor: no store at {missing} (none was made)\n"
    for command in (["inspect", "p"], ["approve", "p"], ["resume", "p"], ["approvals"], ["budget", "show", "s"]):
        done = cli(*command, "--db", str(missing))
        assert not (workdir / "no").exists(), command
        assert done.code in (0, 1) and "Traceback" not in done.err, (command, done.err)
    assert cli("ps").code == 0 and not (workdir / "castor.db").exists()
    cli(*RUN)
    assert (workdir / "castor.db").exists()  # run makes it


def test_submitting_a_tool_the_pools_serve_as_another_function_is_warned_of(
    cli: Cli, workdir: Path, redis_url: str, redis_prefix: str
) -> None:
    """The README's framework example submitted to the example fleet: its delete_file is another function
    than the pools' (which refuse its calls); submit says so before anything runs."""
    config = workdir / "fleet.toml"
    config.write_text(f'[redis]\nurl = "{redis_url}"\nprefix = "{redis_prefix}"\n'
                      '[tools]\nimport = ["fleet_tools.py:delete_file", "tools.py:search"]\n')
    submitted = cli("submit", "agents.py:cleanup", "--tool", "tools.py:search,delete_file", "--config", str(config))
    assert submitted.code == 0, submitted.err
    assert submitted.err == ("castor: warning: this run's delete_file is tools:delete_file, the config's [tools] "
                             "import names fleet_tools:delete_file: workers that serve that one refuse its calls "
                             "(workers started with --tools naming this run's tools serve them; or submit the run "
                             "with theirs)\n")
    same = cli("submit", "agents.py:cleanup", "--tool", "tools.py:search", "--config", str(config))
    assert same.code == 0 and same.err == ""


def test_the_fleet_commands_find_the_config_the_fleets_processes_find(
    cli: Cli, workdir: Path, redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's ``export CASTOR_CONFIG=op/castor.toml``: workers, coordinators and the console took it,
    while ``castor submit`` put the run in the local Redis's db 0 and ``approvals`` read it there."""
    config = _config(workdir, redis_url, redis_prefix)
    monkeypatch.setenv("CASTOR_CONFIG", str(config))
    pid = cli("submit", "agents.py:cleanup", "--tool", "tools.py:search").out.strip()
    assert pid and pid in cli("ps", "--config", str(config)).out  # in the config's Redis, under its prefix
    listed = cli("approvals", "--json")
    assert listed.code == 0 and listed.err == "", listed.err
    assert cli("coordinators").code == 0
    assert "cancel" in cli("cancel", pid).out  # found there too (cancel requested: nobody drives it yet)


def test_a_coordinator_without_a_config_will_not_run_the_tools_of_live_pools_itself(
    cli: Cli, workdir: Path, redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started in a directory with no config, a coordinator took the fleet's runs and ran their tools in
    its own process, past the workers, their secret and their pools; its start line did not say so."""
    import time

    import redis

    monkeypatch.delenv("CASTOR_CONFIG", raising=False)
    client = redis.Redis.from_url(redis_url)
    try:
        client.zadd(f"{redis_prefix}:fleet:workers:ops", {"ops-1@host": time.time()})  # a live worker of pool ops
        refused = cli("coordinator", "--redis", f"{redis_url}?prefix={redis_prefix}")
    finally:
        client.delete(f"{redis_prefix}:fleet:workers:ops")
        client.close()
    assert refused.code == 1
    assert refused.err.startswith("castor: error: worker pools live on this Redis (ops), and this coordinator "
                                  "found no config"), refused.err


def test_submit_takes_the_fleets_tools_and_budgets_unless_told_otherwise(
    cli: Cli, workdir: Path, redis_url: str, redis_prefix: str
) -> None:
    """``castor submit AGENT --config C`` without --tool made a run with no tools (UnknownToolError at its first
    call) and no budget, while ``castor run --executor celery --config C`` took the config's tools; the
    config's ``[budgets]`` capped MCP sessions only."""
    config = workdir / "fleet.toml"
    config.write_text(f'[redis]\nurl = "{redis_url}"\nprefix = "{redis_prefix}"\n'
                      '[tools]\nimport = ["tools.py:search,delete_file"]\ndestructive = ["delete_file"]\n'
                      "[budgets]\napi = 7\n")
    pid = cli("submit", "agents.py:cleanup", "--config", str(config)).out.strip()
    shown = cli("inspect", pid, "--config", str(config), "--json")
    run = json.loads(shown.out)
    assert [tool.rsplit(":", 1)[1] for tool in run["spec"]["tools"]] == ["search", "delete_file"]
    assert run["capabilities"]["api"]["max_budget"] == 7
    told = cli("submit", "agents.py:cleanup", "--config", str(config), "--tool", "tools.py:search",
               "--budget", "api=3")
    run = json.loads(cli("inspect", told.out.strip(), "--config", str(config), "--json").out)
    assert [tool.rsplit(":", 1)[1] for tool in run["spec"]["tools"]] == ["search"]
    assert run["capabilities"]["api"]["max_budget"] == 3


def test_the_configs_destructive_list_names_tools_a_run_may_not_take(workdir: Path) -> None:
    """``castor run --executor celery --config C --tool tools.py:search`` failed: "destructive names unknown
    tools: delete_file", the config's list applied to a run that does not take delete_file."""
    from castor.backends.memory import memory_backend
    from castor.cli import _specs

    loaded = _specs.load("agents.py:cleanup", ["tools.py:search"], [])
    kernel = loaded.kernel(memory_backend(), destructive=["delete_file", "search"])
    assert kernel.tools.find("search").destructive


def test_a_run_queued_with_no_live_coordinator_says_so(cli: Cli, workdir: Path, redis_url: str,
                                                       redis_prefix: str) -> None:
    """``ps`` showed such a run as ``(queued)`` alone, as if it were about to be taken."""
    config = str(_config(workdir, redis_url, redis_prefix))
    pid = cli("submit", "agents.py:cleanup", "--tool", "tools.py:search", "--config", config).out.strip()
    listed = cli("ps", "--config", config)
    line = next(line for line in listed.out.splitlines() if pid in line)
    assert "queued" in line and "waiting: no live coordinator" in line, line
