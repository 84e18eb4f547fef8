"""A run queued to the fleet while another process drives it embedded on the fleet's Redis (a host program's
``Castor.run`` or ``castor run --store`` with its pid, an MCP gateway): that process holds the run's drive
claim, which a coordinator used not to see; it leased the run and drove it beside that process, and every
plain call after it started ran twice. A coordinator now waits for that drive to end (the pid kept on its
taking list), and takes over a drive claim whose lease ran out, in the same step as its lease."""

from __future__ import annotations

import collections
import time
from pathlib import Path

from castor.fleet.scheduler._ops import FleetOps

from castor.backends.redis import keys
from castor.seams import DRIVE_STEP, Backend
from tests.fleet.procs import HERE, Fleet
from tests.fleet.test_fencing import status
from tests.fleet.test_scenario import wait_for
from tests.fleet.tick_agent import CALLS


async def test_a_coordinator_waits_while_a_process_holds_the_runs_drive_claim(ops: FleetOps, backend: Backend) -> None:
    assert (await backend.journal.claim("r", DRIVE_STEP, 0, "host:1:a", 15)).state == "claimed"
    await ops.client.enqueue("r")
    assert await ops.take(timeout=1) == "r"
    status_, (holder, left) = await ops.acquire("r", ops.new_token(), 5000)
    assert (status_, holder) == ("driven", "host:1:a") and 14 < left <= 15
    assert await ops.redis.lrange(ops.taking, 0, -1) == ["r"]  # kept where a dead coordinator's runs are found
    assert await ops.redis.get(keys.lease(ops.prefix, "r")) is None
    await backend.journal.release_claim("r", DRIVE_STEP, "host:1:a")  # its drive ended
    assert await ops.acquire("r", ops.new_token(), 5000) == ("ok", 0)
    assert await ops.redis.llen(ops.taking) == 0


async def test_a_run_adopted_while_driven_elsewhere_is_kept_on_the_taking_list(ops: FleetOps, backend: Backend) -> None:
    # a run set aside and claimed by a coordinator that may drive it is on no list: a death would strand it
    assert (await backend.journal.claim("r", DRIVE_STEP, 0, "host:1:a", 15)).state == "claimed"
    for _ in range(2):
        assert (await ops.acquire("r", ops.new_token(), 5000))[0] == "driven"
    assert await ops.redis.lrange(ops.taking, 0, -1) == ["r"]


async def test_a_lapsed_drive_claim_is_taken_over_and_its_stalled_holder_cannot_renew(
    ops: FleetOps, backend: Backend
) -> None:
    assert (await backend.journal.claim("r", DRIVE_STEP, 0, "host:1:a", 0.05)).state == "claimed"
    time.sleep(0.1)  # its holder died or stalled
    await ops.client.enqueue("r")
    assert await ops.take(timeout=1) == "r"
    assert await ops.acquire("r", ops.new_token(), 5000) == ("ok", 0)
    assert await ops.redis.hget(keys.claims(ops.prefix, "r"), str(DRIVE_STEP)) is None
    # the stalled holder wakes: its renewal fails, so it stops (castor.kernel.claims raises StaleLeaseError)
    assert not await backend.journal.renew_claim("r", DRIVE_STEP, "host:1:a", 15)




def test_a_run_queued_while_a_host_program_drives_it_runs_each_call_once(fleet: Fleet, tmp_path: Path) -> None:
    path = HERE / "tick_agent.py"
    ticks = tmp_path / "ticks.log"
    fleet.env["CASTOR_TEST_TICKS"] = str(ticks)
    fleet.coordinator("co-1", executor="local", lease=2.0, concurrency=4)
    store = f"{fleet.url}?prefix={fleet.prefix}"
    host = fleet.start("host", "run", f"{path}:ticks", "--tool", f"{path}:tick", "--pid", "hosted",
                       "--store", store, "--no-progress")
    wait_for("the host program to drive the run", lambda: ticks.exists() and len(ticks.read_text().split()) >= 2, 20)
    fleet.redis.lpush(keys.run_queue(fleet.prefix), "hosted")  # a second forker's submit, a stray entry
    assert host.wait(timeout=40) == 0, fleet.log("host")
    wait_for("the coordinator to take the run once its drive ended", lambda: fleet.redis.llen(
        keys.taking(fleet.prefix, "co-1")) == 0 and not fleet.redis.exists(keys.lease(fleet.prefix, "hosted")), 20)
    assert status(fleet, "hosted") == "COMPLETED"
    runs = collections.Counter(ticks.read_text().split())
    assert runs == {str(n): 1 for n in range(CALLS)}, runs
    assert "run hosted is driven by another process" in fleet.log("co-1")


async def test_a_garbled_drive_claim_neither_stops_the_coordinator_nor_holds_the_run(ops: FleetOps) -> None:
    # anyone who can write to the fleet's Redis: the lease script must not fail on what it finds there
    await ops.redis.hset(keys.claims(ops.prefix, "r"), str(DRIVE_STEP), "not a claim")
    await ops.client.enqueue("r")
    assert await ops.take(timeout=1) == "r"
    assert await ops.acquire("r", ops.new_token(), 5000) == ("ok", 0)
    assert await ops.redis.hget(keys.claims(ops.prefix, "r"), str(DRIVE_STEP)) is None


async def test_ps_names_the_process_that_drives_a_run_outside_the_fleet(ops: FleetOps, backend: Backend) -> None:
    """A run a coordinator waits for (another process holds its drive) showed as RUNNING, held by nobody."""
    from castor.cli._render import fleet_notes

    assert (await backend.journal.claim("r", DRIVE_STEP, 0, "host:1:a", 15)).state == "claimed"
    assert (await backend.journal.claim("gone", DRIVE_STEP, 0, "host:2:b", 0.0)).state == "claimed"  # ran out
    await ops.redis.hset(keys.claims(ops.prefix, "garbled"), str(DRIVE_STEP), "not a claim")
    state = await ops.client.fleet_state(["r", "gone", "garbled", "none"])
    assert [state[pid]["driven_by"] for pid in ("r", "gone", "garbled", "none")] == ["host:1:a", None, None, None]
    assert fleet_notes(state["r"]) == ["driven by host:1:a, outside the fleet"]
