"""Two operators of one fleet at the same moment: ``castor approve`` and ``castor cancel`` of a parked run,
each a process of its own released together. Whoever wins, the destructive call runs at most once, never
after the cancel said ``cancelled``, and the run settles: completed (the approval came first, and a cancel
only requested of the driven run may come after its last step), or cancelled with nothing waiting."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

from tests.cli.test_races import executions, race
from tests.fleet.procs import Fleet
from tests.fleet.test_fencing import status
from tests.fleet.test_scenario import wait_for

AGENT = '''
import os
from pathlib import Path

from castor import castor_tool
from castor.lib import tool

LOG = Path(__file__).with_name("executions.log")


@castor_tool(destructive=True)
def drop(name: str) -> str:
    with LOG.open("a") as log:
        log.write(f"{os.getpid()}\\n")
    return f"dropped {name}"


def note(text: str) -> str:
    return text


async def work():
    await tool("drop", name="old")
    await tool("note", text="after")
    return "done"
'''

SETTLED = ("COMPLETED", "PREEMPTED")


def test_an_approval_and_a_cancel_at_once_run_the_call_at_most_once_and_never_after_cancelled(
    fleet: Fleet, tmp_path: Path
) -> None:
    fleet.coordinator("co-1", executor="local", lease=2.0, concurrency=4)
    outcomes = []
    for trial in range(3):
        where = tmp_path / f"trial-{trial}"
        where.mkdir()
        agent = where / "race_agent.py"
        agent.write_text(textwrap.dedent(AGENT))
        tools = [a for name in ("drop", "note") for a in ("--tool", f"{agent}:{name}")]
        pid = fleet.cli("submit", f"{agent}:work", *tools, "--pid", f"race-{trial}").stdout.strip()
        wait_for("the run to park", lambda pid=pid: status(fleet, pid) == "SUSPENDED_FOR_HITL", 20)  # type: ignore[misc]
        approve, cancel = race(where, [("go", ["approve", pid, "--as", "ann"]), ("go", ["cancel", pid, "--as", "bob"])],
                               env=fleet.env)
        said = f"approve -> {approve.returncode}: {approve.stdout}{approve.stderr}\n" \
               f"cancel -> {cancel.returncode}: {cancel.stdout}{cancel.stderr}"
        assert "Traceback" not in said, said
        try:  # a coordinator on a loaded machine takes a while; a run that never settles names where it stopped
            wait_for("the run to settle", lambda pid=pid: status(fleet, pid) in SETTLED, 60)  # type: ignore[misc]
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {pid} is {status(fleet, pid)}\n{said}") from None
        time.sleep(1.0)  # a call that would still run after the settle has had time to
        ran, final = executions(where), status(fleet, pid)
        assert ran <= 1, said
        if f"{pid}: cancelled" in cancel.stdout:  # taken off parked before any coordinator resumed it
            assert ran == 0 and final == "PREEMPTED", said
        if approve.returncode != 0:  # the cancel came first: nothing was approved
            assert "cancelled" in approve.stderr and ran == 0, said
        if final == "PREEMPTED":
            run = fleet.cli_json("inspect", pid)
            assert run["preemption_reason"] == "cancelled", said
            assert all(row["pid"] != pid for row in fleet.cli_json("approvals")), said
        else:  # the approval came first; a cancel requested of the driven run came after its last step
            assert ran == 1, said
            assert "ended already" in cancel.stderr or f"{pid}: cancel requested" in cancel.stdout, said
        outcomes.append((final, ran))
    print("outcomes (status, executions):", outcomes)
