"""A coordinator killed (SIGKILL) while a run's child agent has a slow call on a worker: the coordinator
that takes the run over joins the child as the store holds it (its own run and journal), the worker
running the call answers the step sent again, and the run completes with each call made once and the
budget delegated to the child given back on the join."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from castor.backends.redis import keys
from tests.fleet.procs import Fleet, PrivateRedis, tool_spec
from tests.fleet.test_fencing import status
from tests.fleet.test_scenario import wait_for

pytestmark = pytest.mark.fleet

AGENT = f"{Path(__file__).with_name('child_agent.py')}:parent_job"
TOOLS = [a for n in ("ticket", "fetch", "store") for a in ("--tool", tool_spec(n))]


def _child_calling_slowly(fleet: Fleet) -> str:
    """Start the pools and a coordinator, submit the parent; its pid once its child's slow call runs."""
    fleet.config.write_text(fleet.config.read_text() + "heartbeat = 2.0\n")  # [workers] is last
    fleet.worker("web")
    fleet.worker("fs")
    fleet.coordinator("co-a", lease=1.0)
    pid = fleet.cli("submit", AGENT, *TOOLS, "--budget", "api=20").stdout.strip()
    child = f"{pid}::fleet_helper-0"
    wait_for("the child's slow call to start",
             lambda: fleet.redis.exists(keys.started_marker(fleet.prefix, child, 1)), 30)
    return pid


def test_a_coordinator_killed_while_a_child_agent_runs_hands_the_run_over_and_it_completes(fleet: Fleet) -> None:
    pid = _child_calling_slowly(fleet)
    time.sleep(0.3)
    fleet.stop("co-a", signal.SIGKILL)
    fleet.coordinator("co-b", lease=1.0)
    wait_for(f"run {pid} to end", lambda: status(fleet, pid) in ("COMPLETED", "FAILED"), 60)
    shown = fleet.cli_json("inspect", pid)
    assert shown["status"] == "COMPLETED", (shown.get("error"), fleet.log("co-b")[-3000:])
    ticket = shown["result"]["child"]
    assert fleet.count(f"{ticket}:child-slow") == 1  # the takeover did not run the child's call again
    assert fleet.count("tickets") == 2  # the parent's and the child's: neither made again
    used = shown["capabilities"]["api"]["current_usage"]
    assert used == 4, shown["capabilities"]  # parent: ticket, store; the child's two calls (5 delegated, 3 back)


def test_a_redis_restart_and_a_coordinator_kill_while_a_child_agent_runs_lose_nothing(
    aof_fleet: tuple[Fleet, PrivateRedis],
) -> None:
    fleet, server = aof_fleet
    pid = _child_calling_slowly(fleet)
    server.kill()
    fleet.stop("co-a", signal.SIGKILL)
    time.sleep(1.0)
    server.start()
    fleet.coordinator("co-b", lease=1.0)
    wait_for(f"run {pid} to end", lambda: status(fleet, pid) in ("COMPLETED", "FAILED", "SUSPENDED_FOR_HITL"),
             90)
    shown = fleet.cli_json("inspect", pid)
    assert shown["status"] == "COMPLETED", (shown.get("error"), fleet.log("co-b")[-3000:])
    ticket = shown["result"]["child"]
    assert fleet.count(f"{ticket}:child-slow") == 1
    assert fleet.count("tickets") == 2
    assert shown["capabilities"]["api"]["current_usage"] == 4, shown["capabilities"]
