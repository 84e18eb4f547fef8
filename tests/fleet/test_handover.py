"""A coordinator killed (SIGKILL) while a worker runs a long, non-idempotent call: the coordinator that
takes the run over sends the step again, and the worker that gets it waits for the live worker running it
(its heartbeat) and answers with that result — the tool runs once and nobody is asked. Only a step whose
worker is gone too (its heartbeat expired) is in doubt."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from castor.backends.redis import keys
from tests.fleet.procs import Fleet, agent_spec, tool_spec
from tests.fleet.test_fencing import status
from tests.fleet.test_scenario import wait_for

TOOLS = [a for n in ("ticket", "fetch", "store") for a in ("--tool", tool_spec(n))]
HEARTBEAT = 2.0  # the test's heartbeat TTL: a lost worker's step goes in doubt this long after its death


def _start(fleet: Fleet) -> tuple[str, str]:
    """Submit the run, wait until a worker runs its slow call (step 1); its pid and ticket."""
    fleet.config.write_text(fleet.config.read_text() + f"heartbeat = {HEARTBEAT}\n")  # [workers] is last
    fleet.worker("web")
    fleet.worker("fs")
    fleet.coordinator("co-a", lease=1.0)
    pid = fleet.cli("submit", agent_spec("handover_job"), *TOOLS).stdout.strip()
    wait_for("the slow call to start", lambda: fleet.redis.exists(keys.started_marker(fleet.prefix, pid, 1)), 30)
    ticket = fleet.cli_json("inspect", pid)["syscall_log"][0]["response"]
    return pid, ticket


def _settled(fleet: Fleet, pid: str) -> str:
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        now = status(fleet, pid)
        if now in ("COMPLETED", "FAILED", "SUSPENDED_FOR_HITL"):
            return now
        time.sleep(0.1)
    return status(fleet, pid)


def test_a_coordinator_killed_mid_tool_hands_the_running_step_over_and_it_runs_once(
    fleet: Fleet, tmp_path: Path
) -> None:
    release = tmp_path / "release"  # the slow call lasts until the second delivery is seen waiting for it
    fleet.env["CASTOR_TEST_RELEASE"] = str(release)
    pid, ticket = _start(fleet)
    time.sleep(0.5)
    fleet.stop("co-a", signal.SIGKILL)
    fleet.coordinator("co-b", lease=1.0)
    wait_for("the step sent again to wait for the worker running it",
             lambda: "waits for the worker running it" in fleet.log("worker-web"), 60)
    release.touch()
    assert _settled(fleet, pid) == "COMPLETED", fleet.log("co-b")[-3000:] + fleet.log("worker-web")[-3000:]
    assert fleet.cli_json("approvals") == []
    assert fleet.count(f"{ticket}:slow") == 1  # the tool ran once: the takeover did not start it again
    assert fleet.count(f"{ticket}:store") == 1
    assert fleet.cli_json("inspect", pid)["syscall_log"][1]["response"] == f"fetched {ticket}:slow"


def test_a_step_whose_worker_died_too_is_still_in_doubt(fleet: Fleet) -> None:
    pid, ticket = _start(fleet)
    fleet.stop("worker-web", signal.SIGKILL)
    fleet.stop("co-a", signal.SIGKILL)
    fleet.worker("web")
    fleet.coordinator("co-b", lease=1.0)
    assert _settled(fleet, pid) == "SUSPENDED_FOR_HITL", fleet.log("co-b")[-3000:]
    pending = fleet.cli_json("approvals")
    assert [p["pid"] for p in pending] == [pid]
    assert "in doubt: started and never finished" in str(pending[0])
    assert fleet.count(f"{ticket}:slow") == 0  # killed mid-call: it never finished, and it did not run again


def test_a_coordinator_running_tools_itself_killed_mid_call_leaves_it_in_doubt(fleet: Fleet, tmp_path: Path) -> None:
    """``--executor local``: the coordinator claims a non-idempotent call before it runs it; killed mid-call,
    its claim tells the coordinator that takes the run over that the call may have acted (its holder is
    gone): in doubt, a human decides, and the call does not run a second time unasked."""
    starts = tmp_path / "starts"
    fleet.env["CASTOR_TEST_STARTS"] = str(starts)
    fleet.coordinator("co-a", lease=1.0, executor="local")
    tools = [a for n in ("ticket", "store", "slow_write") for a in ("--tool", tool_spec(n))]
    pid = fleet.cli("submit", agent_spec("outage_job"), *tools).stdout.strip()
    wait_for("the slow write to start", lambda: starts.exists() and "start" in starts.read_text(), 30)
    fleet.stop("co-a", signal.SIGKILL)
    fleet.coordinator("co-b", lease=1.0, executor="local")
    assert _settled(fleet, pid) == "SUSPENDED_FOR_HITL", fleet.log("co-b")[-3000:]
    assert starts.read_text().count("start") == 1
    pending = fleet.cli_json("approvals")
    assert [p["pid"] for p in pending] == [pid] and "in doubt: started and never finished" in str(pending[0])
