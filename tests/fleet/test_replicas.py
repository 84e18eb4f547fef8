"""A fleet with ``[redis] replicas = 1``: a worker starts a tool only once the replica has the step's start.

A worker marks a step started (``claim.lua``) before its tool runs; the marker is what stops a second worker,
or a coordinator that took the run over, from running the step again. On a primary whose replica lags, the
marker the primary acknowledged may be lost in a failover: the promoted replica would hand the step out a
second time while the first run of the tool goes on. Real worker pools and a coordinator on a primary whose
replication link the test holds back, then lets catch up."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from castor.backends.redis import keys
from tests.fleet.procs import Fleet, agent_spec, tool_spec
from tests.fleet.test_scenario import wait_for
from tests.redis_support import ReplicationLink, primary_and_replica

pytestmark = pytest.mark.fleet  # starts processes (redis-servers, workers, a coordinator)

TOOLS = [a for n in ("ticket", "fetch", "store") for a in ("--tool", tool_spec(n))]
LAGGING = 2.5  # seconds the test holds the replica back while the run wants to start its first call


@pytest.fixture
def lagging_fleet(tmp_path: Path) -> Iterator[tuple[Fleet, ReplicationLink]]:
    with primary_and_replica(tmp_path) as (primary_url, _, link, _):
        (tmp_path / "fleet").mkdir()
        fleet = Fleet(primary_url, tmp_path / "fleet")
        config = fleet.config.read_text()
        config = config.replace(
            f'prefix = "{fleet.prefix}"\n', f'prefix = "{fleet.prefix}"\nreplicas = 1\nreplica_timeout = 3.0\n', 1
        )
        fleet.config.write_text(config)
        try:
            yield fleet, link
        finally:
            fleet.close()


def _submitted_while_lagging(fleet: Fleet, link: ReplicationLink) -> str:
    """Worker pools and a coordinator started, the replica held back, then ``job`` submitted: its pid."""
    fleet.worker("web")
    fleet.worker("fs")
    fleet.coordinator("co-a")
    link.lag()
    return fleet.cli("submit", agent_spec("job"), *TOOLS).stdout.strip()


def _status(fleet: Fleet, pid: str) -> str:
    return str(fleet.redis.hget(keys.run_header(fleet.prefix, pid), "status") or "")


def test_a_worker_starts_a_tool_only_once_the_replica_has_its_start(
    lagging_fleet: tuple[Fleet, ReplicationLink],
) -> None:
    fleet, link = lagging_fleet
    pid = _submitted_while_lagging(fleet, link)
    waiting = "waits for Redis replicas before it starts"
    wait_for("the worker to wait for the replica (or to run the call)",
             lambda: waiting in fleet.log("worker-web") or fleet.count("tickets"), 30)
    time.sleep(LAGGING)
    logs = fleet.log("worker-web")[-3000:]
    assert fleet.count("tickets") == 0, logs  # ran while its start could be lost: the bug
    assert "0 of the 1 Redis replica(s) asked for ([redis] replicas) acknowledged it within 3 s" in logs

    link.catch_up()
    status = lambda: _status(fleet, pid)  # noqa: E731
    wait_for("the run to end", lambda: status() in ("COMPLETED", "FAILED"), 60)
    assert status() == "COMPLETED", fleet.log("co-a")[-3000:] + fleet.log("worker-web")[-3000:]
    counts = {key: int(fleet.redis.get(key) or 0) for key in fleet.redis.keys(f"{fleet.prefix}:count:*")}
    assert len(counts) == 5 and set(counts.values()) == {1}, counts  # every call ran, and once


def test_a_call_whose_start_the_replica_never_gets_fails_unrun_before_its_deadline(
    lagging_fleet: tuple[Fleet, ReplicationLink],
) -> None:
    """No replica acknowledges (the only one lags, or is gone after a failover): the worker stops asking before the
    call's deadline and refuses it, never run; the coordinator fails the call with the reason at once, rather
    than at its deadline with "is a worker running?"; the tool does not run later, when the replica is back."""
    fleet, link = lagging_fleet
    soon = "default_timeout = 20\ntimeouts = { ticket = 6 }\n"  # the first call's deadline comes soon
    fleet.config.write_text(fleet.config.read_text().replace("default_timeout = 20\n", soon))
    pid = _submitted_while_lagging(fleet, link)
    status = lambda: _status(fleet, pid)  # noqa: E731
    wait_for("the run to end", lambda: status() in ("COMPLETED", "FAILED"), 40)
    assert status() == "FAILED"
    link.catch_up()
    time.sleep(3.0)  # past the worker's pause: a start now would show
    assert fleet.count("tickets") == 0  # it ran for a run that had failed: the agent told the call failed
    error = str(fleet.cli_json("inspect", pid)["error"])
    assert "TaskRefusedError" in error and "not started: 0 of the 1 Redis replica(s) asked for" in error, error
