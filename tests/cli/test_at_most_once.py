"""A plain tool (neither destructive nor idempotent) run embedded by a process that dies mid-call: by
default the next resume runs it again (at least once, as a workflow engine's step); on a store asked for
at most once (``?at_most_once=1`` in its URL) it was claimed before it ran, so the resume finds it in doubt
and a human decides, as in the fleet. An idempotent tool runs again either way: that is what it declares."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.cli.test_races import castor

pytestmark = pytest.mark.fleet  # starts processes

TOOLS = '''
import os
import signal
from pathlib import Path

from castor import castor_tool

LOG = Path(__file__).with_name("executions.log")
DIE = Path(__file__).with_name("die")


def _once(name):
    with LOG.open("a") as log:
        log.write(name + "\\n")
    if DIE.exists():
        DIE.unlink()
        os.kill(os.getpid(), signal.SIGKILL)  # the process dies in the middle of the call
    return f"{name} done"


def notify(to: str) -> str:
    return _once("notify")


@castor_tool(idempotent=True)
def lookup(key: str) -> str:
    return _once("lookup")
'''

AGENT = '''
from castor.lib import tool


async def main():
    await tool("{first}", **{arguments})
    return "finished"
'''


def _crash_then_resume(tmp_path: Path, store: str, first: str, arguments: str) -> tuple[str, list[str]]:
    (tmp_path / "tools.py").write_text(textwrap.dedent(TOOLS))
    (tmp_path / "agent.py").write_text(textwrap.dedent(AGENT).format(first=first, arguments=arguments))
    (tmp_path / "die").touch()
    tools = ("--tool", "tools.py:notify", "--tool", "tools.py:lookup")
    crashed = castor(tmp_path, "--store", store, "run", "agent.py:main", *tools, "--pid", "crashy")
    assert crashed.returncode == -9, (crashed.returncode, crashed.stderr)
    resumed = castor(tmp_path, "--store", store, "resume", "crashy")
    return resumed.stdout + resumed.stderr, (tmp_path / "executions.log").read_text().split()


def test_by_default_a_plain_call_cut_off_by_a_crash_runs_again_on_resume(tmp_path: Path) -> None:
    said, ran = _crash_then_resume(tmp_path, "sqlite:///castor.db", "notify", '{"to": "ops"}')
    assert ran == ["notify", "notify"] and "Status: COMPLETED" in said, said


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_at_most_once_leaves_a_plain_call_cut_off_by_a_crash_to_a_human(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        store = "sqlite:///castor.db?at_most_once=1"
    else:
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        store = f"{url}?prefix={prefix}&at_most_once=1"
    said, ran = _crash_then_resume(tmp_path, store, "notify", '{"to": "ops"}')
    assert ran == ["notify"], said
    assert "Status: SUSPENDED_FOR_HITL" in said and "Why:    in doubt: started and never finished" in said, said
    approved = castor(tmp_path, "--store", store, "approve", "crashy", "--as", "ann")  # a human runs it again
    assert "Status: COMPLETED" in approved.stdout, approved.stdout + approved.stderr
    assert (tmp_path / "executions.log").read_text().split() == ["notify", "notify"]


def test_at_most_once_runs_an_idempotent_call_again(tmp_path: Path) -> None:
    said, ran = _crash_then_resume(tmp_path, "sqlite:///castor.db?at_most_once=1", "lookup", '{"key": "k"}')
    assert ran == ["lookup", "lookup"] and "Status: COMPLETED" in said, said


def test_a_bad_at_most_once_value_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "agent.py").write_text(textwrap.dedent(AGENT).format(first="notify", arguments='{"to": "ops"}'))
    (tmp_path / "tools.py").write_text(textwrap.dedent(TOOLS))
    refused = castor(tmp_path, "--store", "sqlite:///castor.db?at_most_once=maybe", "run", "agent.py:main",
                     "--tool", "tools.py:notify")
    assert refused.returncode == 1 and not (tmp_path / "executions.log").exists()
    assert refused.stderr == ("castor: error: SQLite store option at_most_once='maybe' in the URL must be true "
                              "or false\n"), refused.stderr


GATHERED = '''
import asyncio
import os
import signal
import time
from pathlib import Path

from castor import castor_tool
from castor.lib import tool

LOG = Path(__file__).with_name("executions.log")
DIE = Path(__file__).with_name("die")


def slow(secs: float) -> str:
    with LOG.open("a") as log:
        log.write("slow\\n")
    time.sleep(secs)
    if DIE.exists():
        DIE.unlink()
        os.kill(os.getpid(), signal.SIGKILL)  # dies while the call beside it has finished
    return "slow done"


def notify(to: str) -> str:
    with LOG.open("a") as log:
        log.write("notify\\n")
    return f"told {{to}}"


@castor_tool(destructive=True)
def wipe(path: str) -> str:
    with LOG.open("a") as log:
        log.write("wipe\\n")
    return f"wiped {{path}}"


async def main():
    return await asyncio.gather(tool("slow", secs=0.5), tool("{second}", **{arguments}))
'''


@pytest.mark.parametrize(
    ("store", "second", "arguments", "decisions"),
    [
        ("sqlite:///castor.db?at_most_once=1", "notify", '{"to": "y"}', 0),
        ("redis", "notify", '{"to": "y"}', 0),
        ("sqlite:///castor.db", "wipe", '{"path": "/data"}', 1),
    ],
    ids=["plain-at-most-once", "plain-at-most-once-redis", "destructive-default"],
)
def test_a_call_that_finished_beside_a_slower_one_is_not_run_again_after_a_crash(
    tmp_path: Path, store: str, second: str, arguments: str, decisions: int, request: pytest.FixtureRequest
) -> None:
    """Step 1 finished while step 0 still ran (``asyncio.gather``): its record waited in memory for step 0's,
    and its claim was released as it returned. The process died in step 0: the record was lost, and the next
    drive claimed step 1 afresh and ran it again, with no human (a destructive tool's one approval was used
    twice). Its claim now stays, lapsed, until the record is journaled: the step is in doubt."""
    if store == "redis":
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        store = f"{url}?prefix={prefix}&at_most_once=1"
    (tmp_path / "tools.py").write_text(textwrap.dedent(GATHERED).format(second=second, arguments=arguments))
    tools = ("--tool", "tools.py:slow", "--tool", f"tools.py:{second}")
    log, die = tmp_path / "executions.log", tmp_path / "die"
    if decisions:  # the wipe waits for a human; then the approving drive runs it beside slow, and dies
        assert castor(tmp_path, "--store", store, "run", "tools.py:main", *tools, "--pid", "g1").returncode == 0
        die.touch()
        crashed = castor(tmp_path, "--store", store, "approve", "g1", "--as", "ann")
    else:  # notify finishes beside slow, which kills the process
        die.touch()
        crashed = castor(tmp_path, "--store", store, "run", "tools.py:main", *tools, "--pid", "g1")
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    assert log.read_text().split().count(second) == 1, log.read_text()
    resumed = castor(tmp_path, "--store", store, "resume", "g1")
    said = resumed.stdout + resumed.stderr
    assert log.read_text().split().count(second) == 1, said  # not run again without a human
    assert "Status: SUSPENDED_FOR_HITL" in said and "in doubt" in said, said
    if not decisions:  # slow, cut off itself, waits first; once a human lets it run again, notify's turn
        approved = castor(tmp_path, "--store", store, "approve", "g1", "--as", "ann")
        said = approved.stdout + approved.stderr
        assert sorted(log.read_text().split()) == ["notify", "slow", "slow"], said
        assert "Status: SUSPENDED_FOR_HITL" in said and "Pending: step 1: notify" in said, said


def test_a_run_started_at_most_once_keeps_it_on_a_store_url_without_the_option(tmp_path: Path) -> None:
    """The option lived in the URL only: a resume (or a console, a CASTOR_STORE) naming the same file without
    it ran the cut-off call again. The run now keeps it."""
    (tmp_path / "tools.py").write_text(textwrap.dedent(TOOLS))
    (tmp_path / "agent.py").write_text(textwrap.dedent(AGENT).format(first="notify", arguments='{"to": "ops"}'))
    (tmp_path / "die").touch()
    tools = ("--tool", "tools.py:notify", "--tool", "tools.py:lookup")
    crashed = castor(tmp_path, "--store", "sqlite:///castor.db?at_most_once=1", "run", "agent.py:main", *tools,
                     "--pid", "kept")
    assert crashed.returncode == -9, crashed.stderr
    resumed = castor(tmp_path, "--store", "sqlite:///castor.db", "resume", "kept")  # the option left out
    said = resumed.stdout + resumed.stderr
    assert (tmp_path / "executions.log").read_text().split() == ["notify"], said
    assert "Why:    in doubt: started and never finished" in said, said
    shown = castor(tmp_path, "--store", "sqlite:///castor.db", "inspect", "kept").stdout
    assert "Mode:   human approval for destructive calls; every call not idempotent at most once" in shown, shown
