"""A run cancelled while its call waits on the queue (every worker of its pool busy, or none up yet): the
cancel stops the drive, and the task left on the queue must not start the tool once a worker takes it,
whether its coordinator withdrew it or died first. The run is cancelled; nothing of it runs after that."""

from __future__ import annotations

import signal
from pathlib import Path

from castor.backends.redis import keys
from tests.fleet.procs import Fleet, agent_spec, tool_spec
from tests.fleet.test_fencing import status
from tests.fleet.test_scenario import wait_for

TOOLS = [a for n in ("ticket", "fetch", "store") for a in ("--tool", tool_spec(n))]


def test_a_call_queued_when_its_run_is_cancelled_never_runs(fleet: Fleet) -> None:
    fleet.worker("web")  # no worker of the fs pool yet: the run's `store` call waits on its queue
    fleet.coordinator("co-a")
    pid = fleet.cli("submit", agent_spec("job"), *TOOLS).stdout.strip()
    queue = f"{fleet.queues}:{fleet.queues}.fs"  # the broker's list (its keys carry the queue prefix)
    wait_for("the store call to wait on the fs queue", lambda: fleet.redis.llen(queue) == 1, 30)
    ticket = fleet.cli_json("inspect", pid)["syscall_log"][0]["response"]
    assert "cancel requested" in fleet.cli("cancel", pid, "--as", "ann").stdout
    wait_for("the run to stop", lambda: status(fleet, pid) == "PREEMPTED", 20)

    fleet.worker("fs")  # takes the task left on the queue
    wait_for("the fs worker to take the task", lambda: fleet.redis.llen(queue) == 0, 20)
    dropped = "dropped: its coordinator gave up on it before a worker took it"
    wait_for("the fs worker to drop it (or run it)",
             lambda: dropped in fleet.log("worker-fs") or fleet.count(f"{ticket}:store"), 20)
    assert fleet.count(f"{ticket}:store") == 0, fleet.log("worker-fs")[-3000:]  # the bug: it ran after the cancel
    assert fleet.cli_json("inspect", pid)["preemption_reason"] == "cancelled"
    assert len(fleet.cli_json("inspect", pid)["syscall_log"]) == 3  # the ticket and two fetches, nothing after


def test_a_call_a_dead_coordinator_left_on_the_queue_never_runs_once_its_run_is_cancelled(fleet: Fleet) -> None:
    """The coordinator driving the run dies (SIGKILL) with the run's call on the queue, and an operator
    cancels the run: the coordinator that takes it over stores it cancelled without driving it, and the
    task the dead one left is dropped by the worker that takes it (its claim reads the run stopped)."""
    fleet.worker("web")
    fleet.coordinator("co-a")
    pid = fleet.cli("submit", agent_spec("job"), *TOOLS).stdout.strip()
    queue = f"{fleet.queues}:{fleet.queues}.fs"
    wait_for("the store call to wait on the fs queue", lambda: fleet.redis.llen(queue) == 1, 30)
    ticket = fleet.cli_json("inspect", pid)["syscall_log"][0]["response"]
    fleet.stop("co-a", signal.SIGKILL)  # it withdraws nothing
    assert "cancel requested" in fleet.cli("cancel", pid, "--as", "ann").stdout
    fleet.coordinator("co-b")  # takes the run once co-a's lease lapses, and carries the cancel out
    wait_for("the run to be stored cancelled", lambda: status(fleet, pid) == "PREEMPTED", 30)

    fleet.worker("fs")
    wait_for("the fs worker to take the task", lambda: fleet.redis.llen(queue) == 0, 20)
    wait_for("the fs worker to drop it (or run it)",
             lambda: "dropped: its run was cancelled" in fleet.log("worker-fs") or fleet.count(f"{ticket}:store"), 20)
    assert fleet.count(f"{ticket}:store") == 0, fleet.log("worker-fs")[-3000:]
    assert fleet.cli_json("inspect", pid)["preemption_reason"] == "cancelled"


def test_a_call_a_worker_runs_when_its_run_is_cancelled_keeps_its_charge(fleet: Fleet, tmp_path: Path) -> None:
    """The cancel lands while a worker runs the call: the call finishes and is journaled (as the cancel
    says), and what it cost stays drawn from the shared scope; giving it back would let the team's budget pay
    for one call more than it allows."""
    release = tmp_path / "release"  # the slow call lasts until the cancel has landed
    fleet.env["CASTOR_TEST_RELEASE"] = str(release)
    fleet.cli("budget", "set", "team", "api=100")
    fleet.worker("web")
    fleet.worker("fs")
    fleet.coordinator("co-a")
    pid = fleet.cli("submit", agent_spec("slow_job"), *TOOLS, "--scope", "team").stdout.strip()
    wait_for("the slow call to start", lambda: fleet.redis.exists(keys.started_marker(fleet.prefix, pid, 1)), 30)
    assert "cancel requested" in fleet.cli("cancel", pid, "--as", "ann").stdout
    wait_for("the run to stop", lambda: status(fleet, pid) == "PREEMPTED", 20)
    release.touch()
    wait_for("the slow call to be journaled", lambda: fleet.redis.zcard(keys.journal(fleet.prefix, pid)) == 2, 20)
    used = fleet.cli_json("budget", "show", "team")
    assert used["resources"]["api"]["used"] == 2, used  # the ticket and the slow call: both ran
