"""What a worker process holds for every task it runs: built once, rebuilt after a fork (``WorkerRuntime.process``)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from castor.seams import Backend
from castor.settings import Settings

from ._heartbeat import Heartbeats
from ._loop import LoopThread
from ._scripts import StepScripts


def redis_backend_factory(settings: Settings) -> Backend:
    """The fleet's shared state: the Redis backend under the settings' prefix."""
    from castor.backends.redis import redis_backend
    from castor.fleet.sealing import DataKey

    return redis_backend(
        settings.redis.url, prefix=settings.redis.prefix, data_key=DataKey.for_fleet(settings.security.secret),
        **settings.redis.store_options(),
    )


class WorkerProcess:
    """Per-process state: the loop thread, the shared backend, a Redis client for markers and replies,
    the synchronous scripts of the common case, and the heartbeats of the steps it runs."""

    def __init__(self, settings: Settings, factory: Callable[[Settings], Backend]) -> None:
        from castor.backends.redis import redis_client

        self.pid = os.getpid()
        self.loop = LoopThread()
        self.backend = factory(settings)
        self.redis = redis_client(settings.redis.url)
        self.worker = f"{socket.gethostname()}/{self.pid}"
        self.scripts = StepScripts(
            settings.redis.url, settings.redis.prefix, settings.security.secret or None, worker=self.worker,
            heartbeat=settings.workers.heartbeat, outage=settings.workers.outage_deadline, spool=settings.workers.spool,
            replicas=settings.redis.replicas, replica_timeout=settings.redis.replica_timeout,
        )
        self.heartbeats = Heartbeats(settings.redis.url, settings.workers.heartbeat, self.worker)
