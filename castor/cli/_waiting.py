"""Which runs wait on a pool that no live worker consumes: ``ps`` and ``inspect`` say so within seconds
("waiting: no worker consumes castor.web"), where the coordinator would only fail the call at its deadline.

A worker process keeps its entry in its pool's registry fresh every two seconds (``castor.fleet.workers._heartbeat.
Presence``); a pool with no fresh entry has no live worker. Only the queues of such pools are read (on a
Redis broker: the first ``SCAN_LIMIT`` tasks of the queue's list; a task id starts with its run's pid), so
a fleet whose pools all have workers costs one read per pool. On RabbitMQ the queue cannot be read
without consuming it: a run is not told waiting there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from castor.settings import Settings

if TYPE_CHECKING:
    from castor.fleet.client import FleetClient

SCAN_LIMIT = 1000
_TASK_ID = re.compile(r'"id": "([^"]{1,200}?):\d+#')


async def waiting_runs(client: FleetClient, settings: Settings, pids: Iterable[str]) -> dict[str, str]:
    """Per pid among ``pids`` whose next call sits on the queue of a pool with no live worker: what it
    waits on (``no worker consumes <queue>``)."""
    wanted = set(pids)
    if not wanted:
        return {}
    idle = [pool for pool in settings.pool_names if not await client.live_workers(pool)]
    if not idle or settings.broker_transport != "redis":
        return {}
    from castor.backends.redis import redis_client

    broker = redis_client(settings.broker_url, decode_responses=True)
    found: dict[str, str] = {}
    try:
        for pool in idle:
            queue = settings.queue_of(pool)
            # kombu's Redis transport keeps a queue (priority 0) in the list named after it, under the
            # fleet's global key prefix (castor.fleet.celery_config)
            messages = await broker.lrange(f"{settings.broker.queue_prefix}:{queue}", -SCAN_LIMIT, -1)
            for message in messages:
                match = _TASK_ID.search(message)
                if match and match.group(1) in wanted:
                    found.setdefault(match.group(1), f"no worker consumes {queue}")
    finally:
        await broker.aclose()
    return found
