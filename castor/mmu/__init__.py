"""The context-window MMU: a run's conversation under a token budget, paged out to a memory driver,
searched and paged in again, every eviction and page-in a journaled step (``castor.mmu.core``).

    from castor import Castor
    from castor.mmu import MMU, SQLiteDriver
    kernel = Castor(llm=provider, mmu=MMU(budget=6000, driver=SQLiteDriver("memory.db")))

Agents use the run's conversation through ``castor.lib.memory()`` and ``castor.lib.search_memory``.
The names load on first use: ``castor.checkpoint`` imports ``castor.mmu.messages`` and must stay light.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "MMU",
    "CastorMessage",
    "CharCountEstimator",
    "Hit",
    "InMemoryDriver",
    "KeywordRecency",
    "MMUProtocol",
    "MemoryDriver",
    "OfflineEstimator",
    "Page",
    "RedisDriver",
    "SQLiteDriver",
    "Scorer",
    "SemanticMemoryDriver",
    "TokenCounter",
]

_HOME = {
    "MMU": "castor.mmu.core",
    "MMUProtocol": "castor.mmu.protocol",
    "CastorMessage": "castor.mmu.messages",
    "CharCountEstimator": "castor.mmu.messages",
    "OfflineEstimator": "castor.mmu.messages",
    "TokenCounter": "castor.mmu.messages",
    "Page": "castor.mmu.messages",
    "Hit": "castor.mmu.messages",
    "MemoryDriver": "castor.mmu.driver",
    "Scorer": "castor.mmu.driver",
    "KeywordRecency": "castor.mmu.driver",
    "SemanticMemoryDriver": "castor.mmu.driver",
    "InMemoryDriver": "castor.mmu.drivers.memory",
    "SQLiteDriver": "castor.mmu.drivers.sqlite",
    "RedisDriver": "castor.mmu.drivers.redis",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'castor.mmu' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
