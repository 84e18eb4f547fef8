"""A fleet on Redis behind Sentinel rides the primary's death: a primary, two replicas and a Sentinel, the
store and the broker named by one ``redis+sentinel://`` URL, ``[redis] replicas = 1``. The primary is killed
while a worker runs a call; the Sentinel promotes a replica and re-points the other. Workers, coordinator
and CLI find the new primary through the Sentinel, the run completes, and every call ran once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from castor.backends.redis import keys, redis_client
from tests.fleet.procs import Fleet, agent_spec, tool_spec
from tests.fleet.test_scenario import wait_for
from tests.redis_support import sentinel_topology

pytestmark = pytest.mark.fleet  # starts processes (redis-servers, a Sentinel, workers, a coordinator)

TOOLS = [a for n in ("ticket", "fetch", "store") for a in ("--tool", tool_spec(n))]


def test_a_fleet_behind_sentinel_rides_the_primarys_death_and_runs_every_call_once(
    tmp_path: Path, redis_url: str
) -> None:
    with sentinel_topology(tmp_path / "redis", replicas=2) as deployment:
        (tmp_path / "fleet").mkdir()
        fleet = Fleet(deployment.url, tmp_path / "fleet")
        fleet.env["CASTOR_TEST_REDIS"] = redis_url  # the tools count where the failover cannot reach
        fleet.config.write_text(fleet.config.read_text().replace(
            f'prefix = "{fleet.prefix}"\n', f'prefix = "{fleet.prefix}"\nreplicas = 1\n', 1))
        counts = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            fleet.worker("web")
            fleet.worker("fs")
            fleet.coordinator("co-a", lease=3.0)
            pid = fleet.cli("submit", agent_spec("slow_job"), *TOOLS).stdout.strip()
            started = keys.started_marker(fleet.prefix, pid, 1)
            wait_for("the slow call to start", lambda: fleet.redis.exists(started), 30)
            time.sleep(0.5)
            first = deployment.primary_port()
            deployment.servers[first].kill()  # mid-call, as a host dies
            deployment.servers[first].wait(10)
            deployment.promoted(first)
            fleet.redis.close()
            fleet.redis = redis_client(deployment.url, sync=True, decode_responses=True)

            def status() -> str:  # the Sentinel may say no primary for a moment after the promotion
                try:
                    return str(fleet.redis.hget(keys.run_header(fleet.prefix, pid), "status") or "")
                except redis.ConnectionError:
                    return ""

            wait_for("the run to end", lambda: status() in ("COMPLETED", "FAILED"), 90)
            logs = fleet.log("co-a")[-3000:] + fleet.log("worker-web")[-3000:] + fleet.log("worker-fs")[-2000:]
            assert status() == "COMPLETED", logs
            ran = {str(key).rsplit(":", 1)[1]: int(value) for key in counts.keys(f"{fleet.prefix}:count:*")
                   if (value := counts.get(key)) is not None}
            assert ran == {"tickets": 1, "slow": 1, "store": 1, "after": 1}, ran
            assert [r["request"]["tool_name"] for r in fleet.cli_json("inspect", pid)["syscall_log"]] == [
                "ticket", "fetch", "store", "fetch"]
        finally:
            for key in counts.keys(f"{fleet.prefix}:count:*"):
                counts.delete(key)
            counts.close()
            fleet.close()
