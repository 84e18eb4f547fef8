"""A process killed while a child agent runs: the parent's journal holds the spawn, but the parent's
stored header may not hold the child yet (it is saved as the run goes on). The resume takes the child from
the store (its own run, with its journal) and joins it: the run completes, the child's journaled steps are
not run again, and the budget delegated to it comes back to the parent on the join."""

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

LOG = Path(__file__).with_name("executions.log")
DIE = Path(__file__).with_name("die")


def note(text: str) -> str:
    with LOG.open("a") as log:
        log.write(text + "\\n")
    if text == "child-2" and DIE.exists():
        DIE.unlink()
        os.kill(os.getpid(), signal.SIGKILL)  # the process dies in the middle of the child's call
    return f"noted {text}"
'''

AGENT = '''
from castor import castor_agent
from castor.lib import join, spawn, tool


@castor_agent("helper")
async def helper():
    await tool("note", text="child-1")
    await tool("note", text="child-2")
    return "helped"


async def main():
    await tool("note", text="parent-1")
    result = await join(await spawn("helper", capabilities={"api": 5}))
    await tool("note", text="parent-2")
    return result
'''


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_run_killed_while_its_child_agent_runs_completes_on_resume(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    store = "sqlite:///castor.db"
    if backend == "redis":
        store = f"{request.getfixturevalue('redis_url')}?prefix={request.getfixturevalue('redis_prefix')}"
    (tmp_path / "tools.py").write_text(textwrap.dedent(TOOLS))
    (tmp_path / "agent.py").write_text(textwrap.dedent(AGENT))
    (tmp_path / "die").touch()
    run = ("run", "agent.py:main", "--tool", "tools.py:note", "--pid", "boss", "--budget", "api=10")
    crashed = castor(tmp_path, "--store", store, *run)
    assert crashed.returncode == -9, (crashed.returncode, crashed.stderr)
    resumed = castor(tmp_path, "--store", store, "resume", "boss")
    said = resumed.stdout + resumed.stderr
    assert "Status: COMPLETED" in said and "Result: helped" in said, said
    # child-2 was cut off by the crash (a plain tool embedded runs again); child-1 was journaled: not again
    ran = (tmp_path / "executions.log").read_text().split()
    assert ran == ["parent-1", "child-1", "child-2", "child-2", "parent-2"], ran
    shown = castor(tmp_path, "--store", store, "inspect", "boss").stdout
    assert "api: 6 / 10 remaining" in shown, shown  # parent-1, parent-2, and the child's two calls: 5 - 3 back


def test_a_child_whose_own_run_was_never_stored_is_made_again_from_its_spawn(tmp_path: Path) -> None:
    """The narrower window: the process died after the spawn was journaled and before the child's own run
    was first saved. The child starts again from what the spawn's record says (agent, budget)."""
    import asyncio

    from castor.backends import open_backend

    (tmp_path / "tools.py").write_text(textwrap.dedent(TOOLS))
    (tmp_path / "agent.py").write_text(textwrap.dedent(AGENT))
    (tmp_path / "die").touch()
    store = f"sqlite:///{tmp_path / 'castor.db'}"
    run = ("run", "agent.py:main", "--tool", "tools.py:note", "--pid", "boss", "--budget", "api=10")
    assert castor(tmp_path, "--store", store, *run).returncode == -9

    async def forget_the_child() -> None:  # as if the process had died before the child was first saved
        backend = open_backend(store)
        await backend.runs.delete("boss::helper-0")
        await backend.journal.delete("boss::helper-0")
        await backend.close()

    asyncio.run(forget_the_child())
    resumed = castor(tmp_path, "--store", store, "resume", "boss")
    said = resumed.stdout + resumed.stderr
    assert "Status: COMPLETED" in said and "Result: helped" in said, said
    ran = (tmp_path / "executions.log").read_text().split()
    assert ran == ["parent-1", "child-1", "child-2", "child-1", "child-2", "parent-2"], ran
    shown = castor(tmp_path, "--store", store, "inspect", "boss::helper-0").stdout
    assert "api: 3 / 5 remaining" in shown, shown  # its budget as the spawn gave it


def test_a_cancel_of_the_child_after_the_crash_cancels_the_run_that_drives_it(tmp_path: Path) -> None:
    """Between the crash and the resume, the parent's stored header does not hold the child yet; a cancel of
    the child's pid still stops the parent (it drives the child): the parent's next drive would go on with
    the child otherwise, its cancel said and not kept."""
    (tmp_path / "tools.py").write_text(textwrap.dedent(TOOLS))
    (tmp_path / "agent.py").write_text(textwrap.dedent(AGENT))
    (tmp_path / "die").touch()
    store = "sqlite:///castor.db"
    run = ("run", "agent.py:main", "--tool", "tools.py:note", "--pid", "boss", "--budget", "api=10")
    assert castor(tmp_path, "--store", store, *run).returncode == -9
    said = castor(tmp_path, "--store", store, "cancel", "boss::helper-0").stdout
    assert said.strip() == "boss::helper-0: cancelled (with run boss, which drives this child agent)", said
    shown = castor(tmp_path, "--store", store, "inspect", "boss").stdout
    assert "Status: PREEMPTED" in shown and "cancelled" in shown, shown
    assert (tmp_path / "executions.log").read_text().split() == ["parent-1", "child-1", "child-2"]
    # The child's own row, left running by the crash, is stopped with its parent (a worker reads a fleet
    # child's row before starting a call of it) and follows it: the parent's resume drives it again.
    child = castor(tmp_path, "--store", store, "inspect", "boss::helper-0").stdout
    assert "Status: PREEMPTED" in child and "Preempted: cancelled" in child, child
    resumed = castor(tmp_path, "--store", store, "resume", "boss")
    said = resumed.stdout + resumed.stderr
    assert "Status: COMPLETED" in said and "Result: helped" in said, said
