"""Fencing with real processes: a coordinator paused (SIGSTOP) past its lease while a call of its run is
on a worker loses the run to another coordinator; woken up (SIGCONT) it can no longer write to the run
or dispatch its next call, so the run is driven once."""

from __future__ import annotations

import signal
import time

from castor.backends.redis import keys
from tests.fleet.procs import Fleet, agent_spec, tool_spec
from tests.fleet.test_scenario import steps, wait_for

TOOLS = [a for n in ("ticket", "fetch", "store", "remove") for a in ("--tool", tool_spec(n))]


def status(fleet: Fleet, pid: str) -> str:
    return str(fleet.redis.hget(keys.run_header(fleet.prefix, pid), "status") or "")


def holder(fleet: Fleet, pid: str) -> str:
    return str(fleet.redis.get(keys.lease(fleet.prefix, pid)) or "")


def test_a_paused_coordinator_cannot_write_to_the_run_it_lost(fleet: Fleet) -> None:
    fleet.worker("web")
    fleet.worker("fs")
    fleet.coordinator("co-a", lease=1.0)
    pid = fleet.cli("submit", agent_spec("slow_job"), *TOOLS, "--budget", "api=10").stdout.strip()
    wait_for("the slow call to be dispatched", lambda: steps(fleet, pid) >= 1, 30)
    time.sleep(0.3)
    fleet.stop("co-a", signal.SIGSTOP)
    try:
        fleet.coordinator("co-b", lease=1.0)
        wait_for("co-b to take the run over", lambda: holder(fleet, pid).startswith("co-b/")
                 or status(fleet, pid) in ("SUSPENDED_FOR_HITL", "COMPLETED"), 20)
    finally:
        fleet.stop("co-a", signal.SIGCONT)
    deadline = time.monotonic() + 40
    while status(fleet, pid) != "COMPLETED" and time.monotonic() < deadline:
        # co-b re-sent the call co-a had on a worker: in doubt, a human decides (the journal has its result)
        for item in fleet.cli_json("approvals"):
            fleet.cli("approve", item["pid"], check=False)
        time.sleep(0.2)
    assert status(fleet, pid) == "COMPLETED", fleet.log("co-b")[-2000:]

    log = fleet.cli_json("inspect", pid)["syscall_log"]
    assert [r["request"]["tool_name"] for r in log] == ["ticket", "fetch", "store", "fetch"]
    ticket = log[0]["response"]
    for tag in ("slow", "store", "after"):
        assert fleet.count(f"{ticket}:{tag}") == 1, tag  # every call ran once: co-a dispatched nothing after
    assert fleet.count("tickets") == 1
    woke = fleet.log("co-a")
    assert f"lost run {pid}" in woke or f"lease on {pid} lost" in woke, woke[-2000:]
    assert fleet.procs["co-a"].poll() is None  # it lost the run, not its mind: still serving
