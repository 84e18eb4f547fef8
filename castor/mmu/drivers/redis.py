"""Pages in Redis, for the fleet: any coordinator that drives the run next finds them.

A run's pages are one hash, ``<prefix>:mmu:{<pid>}`` (page id -> the page's JSON): one ``HSET`` stores a
page-out atomically and idempotently (a page written again is the same value), one ``HGETALL`` reads the
run's pages; with ``ttl`` the hash expires that long after the run's last page-out (sent in the same
round trip). It goes through Castor's Redis connection (``castor.backends.redis._client``): the same
error translation and per-event-loop clients as the stores.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from castor.backends.redis._client import RedisConnection
from castor.errors import ConfigError
from castor.mmu.driver import RankedDriver, Scorer
from castor.mmu.messages import Page


class RedisDriver(RankedDriver):
    """Pages of each run in a Redis hash under ``prefix``."""

    def __init__(self, url: str | RedisConnection = "redis://127.0.0.1:6379/0", *, prefix: str = "castor",
                 scorer: Scorer | None = None, ttl: float | None = None) -> None:
        super().__init__(scorer)
        if ttl is not None and not ttl > 0:
            raise ConfigError(f"RedisDriver ttl must be a positive number of seconds, got {ttl!r}")
        self.conn = url if isinstance(url, RedisConnection) else RedisConnection(url)
        self.prefix = prefix
        self.ttl = ttl  # seconds a run's pages live after its last page-out (None: until dropped)

    def key(self, pid: str) -> str:
        """The hash of run ``pid``'s pages (the pid in braces: one cluster slot per run)."""
        return f"{self.prefix}:mmu:{{{pid}}}"

    async def store_pages(self, pid: str, pages: Sequence[Page]) -> None:
        """One ``HSET`` of every page (safe to repeat: the same page is the same value)."""
        if not pages:
            return
        key = self.key(pid)
        flat = [part for p in pages for part in (p.id, json.dumps(p.to_dict(), ensure_ascii=False, sort_keys=True))]
        commands: list[tuple[Any, ...]] = [("HSET", key, *flat)]
        if self.ttl is not None:
            commands.append(("PEXPIRE", key, int(self.ttl * 1000)))
        for reply in await self.conn.execute(*commands):  # one round trip
            if isinstance(reply, Exception):
                raise reply

    async def load_pages(self, pid: str) -> list[Page]:
        """Oldest first."""
        stored = await self.conn.command("hgetall", self.key(pid))
        return sorted((Page.from_dict(json.loads(v)) for v in stored.values()), key=lambda p: p.order)

    async def drop(self, pid: str) -> None:
        """Delete the run's hash."""
        await self.conn.command("delete", self.key(pid))

    async def close(self) -> None:
        """Close this event loop's client."""
        await self.conn.close()
