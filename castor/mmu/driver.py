"""Where paged-out messages go, and how they are found again.

``MemoryDriver`` is the seam: a driver keeps a run's pages (``store_pages``, idempotent: a page stored
twice is kept once) and finds them again (``find``). The three drivers shipped (in-memory, SQLite,
Redis) keep pages and rank them with a ``Scorer``: by default ``KeywordRecency`` (keyword overlap,
weighted by how rare a word is, with a small bonus for recent pages; no embedding service). An embedding
search plugs in as another ``Scorer`` (``score(query, pages)``), or as a driver whose ``find`` asks a
vector store. castor-kernel 0.5.1's ``SemanticMemoryDriver`` (``ingest`` / ``search`` over text) still
works: ``as_driver`` adapts one.

The journal, not the driver, is the record of what left the context: a resumed or forked run stores its
replayed page-outs again under its own pid, so a driver that lost them (memory, another process) has them.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from castor.errors import ConfigError
from castor.mmu.messages import Hit, Page

_WORD = re.compile(r"\w+", re.UNICODE)


@runtime_checkable
class MemoryDriver(Protocol):
    """A store of paged-out messages per run (pid)."""

    async def store_pages(self, pid: str, pages: Sequence[Page]) -> None:
        """Keep ``pages`` for run ``pid``; a page already kept (same id) is kept once."""
        ...

    async def find(self, pid: str, query: str, limit: int) -> list[Hit]:
        """At most ``limit`` of run ``pid``'s pages that match ``query``, best first."""
        ...

    async def load_pages(self, pid: str) -> list[Page]:
        """Every page of run ``pid``, oldest first."""
        ...

    async def drop(self, pid: str) -> None:
        """Forget run ``pid``'s pages."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """Ranks pages for a query: one score per page (0: not a match). An embedding search is a ``Scorer``."""

    def score(self, query: str, pages: Sequence[Page]) -> list[float]:
        """The score of each of ``pages`` for ``query``."""
        ...


def words(text: str) -> list[str]:
    """Lower-case words of two characters or more."""
    return [w for w in _WORD.findall(text.lower()) if len(w) > 1]


class KeywordRecency:
    """Keyword overlap weighted by rarity (a word in few pages counts more), plus ``recency`` times the
    page's age rank (0 for the oldest, 1 for the newest) for pages that match. An empty query matches
    every page by recency alone."""

    def __init__(self, recency: float = 0.25) -> None:
        self.recency = recency

    def score(self, query: str, pages: Sequence[Page]) -> list[float]:
        """Scores in the order of ``pages``."""
        terms = set(words(query))
        bags = [Counter(words(p.content + " " + p.role)) for p in pages]
        count = len(pages)
        ages = {p.id: i for i, p in enumerate(sorted(pages, key=lambda p: p.order))}
        scores = []
        for page, bag in zip(pages, bags, strict=True):
            age = ages[page.id] / (count - 1) if count > 1 else 1.0
            if not terms:
                scores.append(age)
                continue
            keyword = 0.0
            for term in terms & bag.keys():
                seen_in = sum(1 for b in bags if term in b)
                keyword += (1.0 + math.log(bag[term])) * math.log(1.0 + count / seen_in)
            scores.append(keyword + self.recency * age if keyword else 0.0)
        return scores


def rank(query: str, pages: Sequence[Page], limit: int, scorer: Scorer) -> list[Hit]:
    """The best ``limit`` matches (score > 0), best first; ties go to the newer page."""
    scored = [Hit(p, s) for p, s in zip(pages, scorer.score(query, pages), strict=True) if s > 0]
    scored.sort(key=lambda h: (-h.score, tuple(-n for n in h.page.order)))
    return scored[: max(limit, 0)]


class RankedDriver(ABC):
    """A driver that keeps pages and ranks them itself with ``scorer`` (every driver shipped is one)."""

    def __init__(self, scorer: Scorer | None = None) -> None:
        self.scorer: Scorer = scorer or KeywordRecency()

    @abstractmethod
    async def store_pages(self, pid: str, pages: Sequence[Page]) -> None:
        """Keep ``pages`` for run ``pid`` (idempotent)."""

    @abstractmethod
    async def load_pages(self, pid: str) -> list[Page]:
        """Every page of run ``pid``, oldest first."""

    @abstractmethod
    async def drop(self, pid: str) -> None:
        """Forget run ``pid``'s pages."""

    async def find(self, pid: str, query: str, limit: int) -> list[Hit]:
        """Run ``pid``'s pages ranked by the scorer."""
        return rank(query, await self.load_pages(pid), limit, self.scorer)


class SemanticMemoryDriver(ABC):
    """castor-kernel 0.5.1's driver interface: ``ingest`` evicted messages, ``search`` them as text."""

    @abstractmethod
    async def ingest(self, messages: list[dict[str, Any]], pid: str) -> str:
        """Store evicted messages; returns a confirmation."""

    @abstractmethod
    async def search(self, query: str, pid: str) -> str:
        """Relevant stored content, as text."""


class LegacyDriver:
    """A 0.5.1 ``SemanticMemoryDriver`` as a ``MemoryDriver``: its search answers with one text hit."""

    def __init__(self, legacy: Any) -> None:
        self.legacy = legacy

    async def store_pages(self, pid: str, pages: Sequence[Page]) -> None:
        """``ingest`` the pages' messages."""
        await self.legacy.ingest([{**p.message, "role": p.role, "content": p.content} for p in pages], pid)

    async def find(self, pid: str, query: str, limit: int) -> list[Hit]:
        """``search``'s text as one hit (id ``"search"``)."""
        text = str(await self.legacy.search(query, pid))
        return [Hit(Page("search", 0, "memory", text, 0), 1.0)] if text else []

    async def load_pages(self, pid: str) -> list[Page]:
        """A 0.5.1 driver cannot list what it keeps."""
        return []

    async def drop(self, pid: str) -> None:
        """A 0.5.1 driver cannot forget."""


def as_driver(driver: Any) -> MemoryDriver:
    """``driver`` as a ``MemoryDriver``: as it is, or a 0.5.1 ``ingest``/``search`` driver adapted."""
    if all(callable(getattr(driver, name, None)) for name in ("store_pages", "find", "load_pages", "drop")):
        return driver
    if callable(getattr(driver, "ingest", None)) and callable(getattr(driver, "search", None)):
        return LegacyDriver(driver)
    raise ConfigError(
        f"MMU driver must be a castor.mmu.MemoryDriver (store_pages, find, load_pages, drop) or a 0.5.1 "
        f"SemanticMemoryDriver (ingest, search), got {type(driver).__name__}"
    )
