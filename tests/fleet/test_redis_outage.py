"""A Redis outage longer than the lease, mid-tool, with real processes on a private ``redis-server`` (AOF
on): the coordinator's lease runs out and it leases its own run again while its first drive still waits
for the 5 s non-idempotent call. The call must start at most once, the coordinator must dispatch it once,
and the run must end in a clear state: completed, or waiting for a human with the reason."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from castor.backends.redis import keys
from tests.fleet.procs import Fleet, PrivateRedis, agent_spec, tool_spec

pytestmark = pytest.mark.fleet  # starts processes (CLI, workers or redis-server)

TOOLS = [a for n in ("ticket", "store", "slow_write") for a in ("--tool", tool_spec(n))]
LEASE = 2.0
OUTAGE = 4.0  # longer than the lease


def header(fleet: Fleet, pid: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in fleet.redis.hgetall(keys.run_header(fleet.prefix, pid)).items()}


def dispatches(fleet: Fleet, tool: str) -> set[str]:
    """The ids of the tasks of ``tool`` the workers of pool fs received (a redelivery keeps its id)."""
    return set(re.findall(rf"Task castor\.tool\.{tool}\[([^\]]+)\] received", fleet.log("worker-fs")))


def _outage_job(fleet: Fleet, server: PrivateRedis) -> tuple[str, Path]:
    """Submit ``outage_job`` to a coordinator with a 2 s lease, kill Redis for 4 s once its slow call has
    started, and wait for the run to end: its pid, and the file its call's starts were noted in."""
    starts = fleet.tmp / "starts"
    fleet.env["CASTOR_TEST_STARTS"] = str(starts)
    workers = {"web": fleet.worker("web"), "fs": fleet.worker("fs")}
    fleet.coordinator("co-a", lease=LEASE)
    pid = fleet.cli("submit", agent_spec("outage_job"), *TOOLS).stdout.strip()
    deadline = time.monotonic() + 30
    while not starts.exists():
        assert time.monotonic() < deadline, fleet.log("co-a")[-2000:]
        time.sleep(0.05)
    time.sleep(0.3)
    server.kill()  # mid-call, for longer than the lease
    time.sleep(OUTAGE)
    server.start()
    deadline = time.monotonic() + 60
    while header(fleet, pid).get("status") not in ("COMPLETED", "FAILED", "SUSPENDED_FOR_HITL"):
        assert time.monotonic() < deadline, fleet.log("co-a")[-3000:]
        for pool, proc in workers.items():
            if proc.poll() is not None:  # the test is the workers' supervisor (a worker may exit over an outage)
                workers[pool] = fleet.worker(pool)
        time.sleep(0.1)
    return pid, starts


def test_a_redis_outage_past_the_lease_never_drives_a_run_twice(aof_fleet: tuple[Fleet, PrivateRedis]) -> None:
    fleet, server = aof_fleet
    pid, starts = _outage_job(fleet, server)
    assert starts.read_text().count("start") == 1  # the non-idempotent call started once
    assert len(dispatches(fleet, "slow_write")) == 1  # and the coordinator sent it once, with one drive
    log = fleet.log("co-a")
    assert f"run {pid} leased again while its previous drive here still goes" in log, log[-3000:]
    final = header(fleet, pid)
    # a clear end: the new drive replayed the call's journaled result and went on
    assert final.get("status") == "COMPLETED", (final, log[-3000:])
    assert fleet.procs["co-a"].poll() is None


def test_a_redis_outage_longer_than_the_heartbeat_does_not_make_a_live_worker_look_lost(
    aof_fleet: tuple[Fleet, PrivateRedis],
) -> None:
    """The step's heartbeat (1.5 s) expires while Redis is away for 4 s (its TTL runs on, restored from the
    AOF); the worker still runs the call and sets the key again when Redis is back. A coordinator that
    looks at the step's heartbeat (``castor.executors._loss``) must not take that worker for lost: the run
    completes, the call started once, nobody asked."""
    fleet, server = aof_fleet
    with fleet.config.open("a") as config:
        config.write("heartbeat = 1.5\n")  # under [workers], the config's last section
    pid, starts = _outage_job(fleet, server)
    final = header(fleet, pid)
    assert final.get("status") == "COMPLETED", (final, fleet.log("co-a")[-3000:])
    assert starts.read_text().count("start") == 1
    assert "stopped renewing the step's heartbeat" not in fleet.log("co-a")


def test_a_call_that_finishes_while_redis_is_away_is_not_in_doubt(aof_fleet: tuple[Fleet, PrivateRedis]) -> None:
    """The call (1 s) finishes 0.7 s into a 4 s outage: its worker asks Redis again and again to journal it
    (pauses doubling), and sets the step's heartbeat (1.5 s, expired meanwhile) again once Redis is back.
    The coordinator's lease has run out too and it leases the run again. The finished effect must be
    journaled, not lost and not taken for in doubt: the run completes, the call started once."""
    fleet, server = aof_fleet
    with fleet.config.open("a") as config:
        config.write("heartbeat = 1.5\n")  # under [workers], the config's last section
    fleet.env["CASTOR_TEST_SECONDS"] = "1"
    pid, starts = _outage_job(fleet, server)
    final = header(fleet, pid)
    assert final.get("status") == "COMPLETED", (final, fleet.log("co-a")[-3000:], fleet.log("worker-fs")[-3000:])
    assert starts.read_text().count("start") == 1
