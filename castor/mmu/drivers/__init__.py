"""The memory drivers shipped: ``InMemoryDriver`` (one process), ``SQLiteDriver`` (a file),
``RedisDriver`` (the fleet; imported on first use, it needs the ``redis`` package)."""

from __future__ import annotations

from typing import Any

from castor.mmu.drivers.memory import InMemoryDriver
from castor.mmu.drivers.sqlite import SQLiteDriver

__all__ = ["InMemoryDriver", "RedisDriver", "SQLiteDriver"]


def __getattr__(name: str) -> Any:
    if name == "RedisDriver":  # imports redis: only when named
        from castor.mmu.drivers.redis import RedisDriver

        return RedisDriver
    raise AttributeError(f"module 'castor.mmu.drivers' has no attribute {name!r}")
