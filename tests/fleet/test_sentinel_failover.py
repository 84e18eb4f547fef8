"""A fleet on Redis behind Sentinel rides the primary's death: a primary, two replicas and a Sentinel, the
store and the broker named by one ``redis+sentinel://`` URL, ``[redis] replicas = 1``. The primary is killed
while a worker runs a call; the Sentinel promotes a replica and re-points the other. Workers, coordinator
and CLI find the new primary through the Sentinel, the run completes, and every call ran once."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from castor.backends.redis import keys, redis_client
from tests.fleet.test_failover import each_call_ran_once, slow_run_on
from tests.redis_support import sentinel_topology

pytestmark = pytest.mark.fleet  # starts processes (redis-servers, a Sentinel, workers, a coordinator)


def test_a_fleet_behind_sentinel_rides_the_primarys_death_and_runs_every_call_once(
    tmp_path: Path, redis_url: str
) -> None:
    with sentinel_topology(tmp_path / "redis", replicas=2) as deployment, \
            slow_run_on(deployment.url, tmp_path, redis_url) as (fleet, pid):
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

        try:
            each_call_ran_once(fleet, pid, redis_url, status)
        except AssertionError as exc:  # what the Sentinel saw: a second failover, say
            said = (tmp_path / "redis" / "sentinel" / "sentinel.log").read_text(errors="replace")
            raise AssertionError(f"{exc}\nthe Sentinel's log:\n{said[-3000:]}") from None
