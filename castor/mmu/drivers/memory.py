"""Pages kept in this process: for tests, one-process runs, and castor-kernel 0.5.1's ``InMemoryDriver``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from castor.mmu.driver import RankedDriver, Scorer
from castor.mmu.messages import Page


class InMemoryDriver(RankedDriver):
    """A dict of pages per pid. Also speaks 0.5.1's ``ingest`` / ``search`` (text in, text out)."""

    def __init__(self, scorer: Scorer | None = None) -> None:
        super().__init__(scorer)
        self._pages: dict[str, dict[str, Page]] = {}

    async def store_pages(self, pid: str, pages: Sequence[Page]) -> None:
        """Keep ``pages`` (by id: storing one again replaces it with itself)."""
        kept = self._pages.setdefault(pid, {})
        for page in pages:
            kept[page.id] = page

    async def load_pages(self, pid: str) -> list[Page]:
        """Oldest first."""
        return sorted(self._pages.get(pid, {}).values(), key=lambda p: p.order)

    async def drop(self, pid: str) -> None:
        """Forget the run's pages."""
        self._pages.pop(pid, None)

    # --- castor-kernel 0.5.1's SemanticMemoryDriver ------------------------------------------------

    async def ingest(self, messages: list[dict[str, Any]], pid: str) -> str:
        """Keep ``messages`` as pages (0.5.1's call); returns a confirmation."""
        start = len(self._pages.get(pid, {}))
        pages = [
            Page(f"ingest.{start + i}", -1, str(m.get("role", "")), str(m.get("content", "")), 0, dict(m))
            for i, m in enumerate(messages)
        ]
        await self.store_pages(pid, pages)
        return f"Ingested {len(messages)} messages for pid={pid}."

    async def search(self, query: str, pid: str) -> str:
        """0.5.1's search: every kept message containing ``query``, one JSON line each."""
        needle = query.lower()
        found = [
            json.dumps(p.message or {"role": p.role, "content": p.content}, ensure_ascii=False)
            for p in await self.load_pages(pid)
            if needle in (p.content + " " + json.dumps(p.message, ensure_ascii=False)).lower()
        ]
        return "\n".join(found) if found else "No matching memories found."
