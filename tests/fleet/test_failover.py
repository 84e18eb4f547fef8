"""A fleet rides a failover to a Redis replica: a primary and two replicas, the fleet's processes reaching
Redis through one address that follows the primary (as a managed Redis endpoint or a Sentinel-aware proxy
does), ``[redis] replicas = 1``. The primary is killed while a worker runs a call; a replica is promoted and
the other follows it. The workers and the coordinator reconnect, the run completes, and every call ran once."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from castor.backends.redis import keys
from tests.fleet.procs import Fleet, agent_spec, tool_spec
from tests.fleet.test_scenario import wait_for
from tests.redis_support import FollowingAddress, free_port, primary_and_replica, start_redis_server

pytestmark = pytest.mark.fleet  # starts processes (redis-servers, workers, a coordinator)

TOOLS = [a for n in ("ticket", "fetch", "store") for a in ("--tool", tool_spec(n))]


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


@contextlib.contextmanager
def slow_run_on(url: str, tmp: Path, redis_url: str) -> Iterator[tuple[Fleet, str]]:
    """A fleet on ``url`` with ``[redis] replicas = 1`` (two pools, one coordinator) running ``slow_job``,
    yielded once its slow call has started; the tools count on ``redis_url``, out of the failover's reach. On
    leaving, the fleet is stopped and its counts dropped."""
    (tmp / "fleet").mkdir()
    fleet = Fleet(url, tmp / "fleet")
    fleet.env["CASTOR_TEST_REDIS"] = redis_url
    fleet.config.write_text(fleet.config.read_text().replace(
        f'prefix = "{fleet.prefix}"\n', f'prefix = "{fleet.prefix}"\nreplicas = 1\n', 1))
    try:
        fleet.worker("web")
        fleet.worker("fs")
        fleet.coordinator("co-a", lease=3.0)
        pid = fleet.cli("submit", agent_spec("slow_job"), *TOOLS).stdout.strip()
        started = keys.started_marker(fleet.prefix, pid, 1)
        wait_for("the slow call to start", lambda: fleet.redis.exists(started), 30)
        time.sleep(0.5)
        yield fleet, pid
    finally:
        counts = redis.Redis.from_url(redis_url, decode_responses=True)
        for key in counts.keys(f"{fleet.prefix}:count:*"):
            counts.delete(key)
        counts.close()
        fleet.close()


def each_call_ran_once(fleet: Fleet, pid: str, redis_url: str, status: Callable[[], str]) -> None:
    """Wait for the run to end; it completed, and every call of ``slow_job`` ran once."""
    def logs() -> str:
        return fleet.log("co-a")[-3000:] + fleet.log("worker-web")[-3000:] + fleet.log("worker-fs")[-2000:]

    try:
        wait_for("the run to end", lambda: status() in ("COMPLETED", "FAILED"), 90)
    except AssertionError as exc:  # what the fleet said while the run did not end
        raise AssertionError(f"{exc} (status {status()!r}): {logs()}") from None
    assert status() == "COMPLETED", logs()
    counts = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        ran = {str(key).rsplit(":", 1)[1]: int(value) for key in counts.keys(f"{fleet.prefix}:count:*")
               if (value := counts.get(key)) is not None}
    finally:
        counts.close()
    assert ran == {"tickets": 1, "slow": 1, "store": 1, "after": 1}, ran
    assert [r["request"]["tool_name"] for r in fleet.cli_json("inspect", pid)["syscall_log"]] == [
        "ticket", "fetch", "store", "fetch"]


def test_a_fleet_rides_a_failover_to_a_replica_and_runs_every_call_once(tmp_path: Path, redis_url: str) -> None:
    with primary_and_replica(tmp_path) as (primary_url, replica_url, _, primary):
        (tmp_path / "second").mkdir()
        second_port = free_port()
        second = start_redis_server(tmp_path / "second", second_port, "--replicaof", "127.0.0.1",
                                    str(_port(primary_url)))
        address = FollowingAddress(_port(primary_url))
        try:
            with slow_run_on(f"redis://127.0.0.1:{address.port}/0", tmp_path, redis_url) as (fleet, pid):
                primary.kill()  # mid-call, as a host dies
                primary.wait(10)
                promoted = redis.Redis.from_url(replica_url)
                promoted.execute_command("REPLICAOF", "NO", "ONE")
                promoted.close()
                other = redis.Redis(port=second_port)
                other.execute_command("REPLICAOF", "127.0.0.1", str(_port(replica_url)))
                other.close()
                address.follow(_port(replica_url))
                fleet.redis.close()
                fleet.redis = redis.Redis.from_url(replica_url, decode_responses=True)
                each_call_ran_once(fleet, pid, redis_url, lambda: str(
                    fleet.redis.hget(keys.run_header(fleet.prefix, pid), "status") or ""))
        finally:
            address.close()
            second.kill()
            second.wait(10)
