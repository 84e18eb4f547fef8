"""Pages in Redis, for the fleet: any coordinator that drives the run next finds them.

A run's pages are one hash, ``<prefix>:mmu:{<pid>}`` (page id -> the page's JSON): one ``HSET`` stores a
page-out atomically and idempotently (a page written again is the same value), one ``HGETALL`` reads the
run's pages. It goes through Castor's Redis connection (``castor.backends.redis._client``): the same
error translation and per-event-loop clients as the stores.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from castor.backends.redis._client import RedisConnection
from castor.mmu.driver import RankedDriver, Scorer
from castor.mmu.messages import Page


class RedisDriver(RankedDriver):
    """Pages of each run in a Redis hash under ``prefix``."""

    def __init__(self, url: str | RedisConnection = "redis://127.0.0.1:6379/0", *, prefix: str = "castor",
                 scorer: Scorer | None = None) -> None:
        super().__init__(scorer)
        self.conn = url if isinstance(url, RedisConnection) else RedisConnection(url)
        self.prefix = prefix

    def key(self, pid: str) -> str:
        """The hash of run ``pid``'s pages (the pid in braces: one cluster slot per run)."""
        return f"{self.prefix}:mmu:{{{pid}}}"

    async def store_pages(self, pid: str, pages: Sequence[Page]) -> None:
        """One ``HSET`` of every page (safe to repeat: the same page is the same value)."""
        if pages:
            mapping = {p.id: json.dumps(p.to_dict(), ensure_ascii=False, sort_keys=True) for p in pages}
            await self.conn.command("hset", self.key(pid), mapping=mapping)

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
