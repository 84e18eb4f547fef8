"""`castor resume` of a run the fleet holds. Its coordinator drives it under a lease, which the embedded
resume's drive claim does not see: the resume used to drive the run beside the coordinator, and every plain
call after it started ran twice (five of twelve here). It is now refused, saying who holds the run."""

from __future__ import annotations

import collections
from pathlib import Path

from tests.fleet.procs import HERE, Fleet
from tests.fleet.test_cli import run_json, submit, write_agent
from tests.fleet.test_fencing import status
from tests.fleet.test_scenario import wait_for
from tests.fleet.tick_agent import CALLS


def test_resuming_a_run_a_coordinator_drives_is_refused_and_each_call_runs_once(fleet: Fleet, tmp_path: Path) -> None:
    path = HERE / "tick_agent.py"
    ticks = tmp_path / "ticks.log"
    fleet.env["CASTOR_TEST_TICKS"] = str(ticks)
    fleet.coordinator("co-1", executor="local", lease=2.0, concurrency=4)
    pid = fleet.cli("submit", f"{path}:ticks", "--tool", f"{path}:tick").stdout.strip()
    wait_for("the run to be driven", lambda: len(run_json(fleet, pid)["syscall_log"]) >= 2, 20)
    refused = fleet.cli("resume", pid, check=False, timeout=60)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"run '{pid}' is the fleet's (coordinator co-1 drives it)" in refused.stderr, refused.stderr
    wait_for("the run to finish", lambda: status(fleet, pid) == "COMPLETED", 40)
    runs = collections.Counter(ticks.read_text().split())
    assert runs == {str(n): 1 for n in range(CALLS)}, runs


def test_resuming_a_parked_fleet_run_is_refused_and_approve_says_how(fleet: Fleet, tmp_path: Path) -> None:
    path = write_agent(tmp_path)
    fleet.coordinator("co-1", executor="local", lease=2.0, concurrency=4)
    pid = submit(fleet, path, "work")
    wait_for("the run to park", lambda: status(fleet, pid) == "SUSPENDED_FOR_HITL", 20)
    refused = fleet.cli("resume", pid, check=False)
    assert refused.returncode == 1 and "it waits for a decision on step 1" in refused.stderr, refused.stderr
    assert f"castor approve {pid}" in refused.stderr
    assert status(fleet, pid) == "SUSPENDED_FOR_HITL"  # untouched
    fleet.cli("approve", pid, "--as", "ann")
    wait_for("the run to finish", lambda: status(fleet, pid) == "COMPLETED", 20)
