"""Pages in a SQLite file: a run's paged-out messages outlive the process that drove it."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from castor.backends.sqlite._db import BUSY_TIMEOUT, enter_wal
from castor.mmu.driver import RankedDriver, Scorer
from castor.mmu.messages import Page

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mmu_pages (
    pid TEXT NOT NULL, id TEXT NOT NULL, step INTEGER NOT NULL, idx INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (pid, id)
)
"""


class SQLiteDriver(RankedDriver):
    """One table, ``mmu_pages``, keyed by (pid, page id): storing a page again changes nothing.

    The file may be the kernel's own SQLite store (another table in it) or a file of its own. Calls are
    short local writes and reads, made under a lock on one connection.
    """

    def __init__(self, path: str | Path, scorer: Scorer | None = None) -> None:
        super().__init__(scorer)
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=BUSY_TIMEOUT)
        enter_wal(self._db)  # the file may be new, and opened by the kernel's store at the same time
        with self._lock, self._db:
            self._db.execute(_SCHEMA)

    async def store_pages(self, pid: str, pages: Sequence[Page]) -> None:
        """Insert the pages not kept yet, in one transaction."""
        rows = [(pid, p.id, p.step, p.order[1], json.dumps(p.to_dict(), ensure_ascii=False)) for p in pages]
        with self._lock, self._db:
            self._db.executemany("INSERT OR IGNORE INTO mmu_pages VALUES (?, ?, ?, ?, ?)", rows)

    async def load_pages(self, pid: str) -> list[Page]:
        """Oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT data FROM mmu_pages WHERE pid = ? ORDER BY step, idx", (pid,)
            ).fetchall()
        return [Page.from_dict(json.loads(data)) for (data,) in rows]

    async def drop(self, pid: str) -> None:
        """Delete the run's pages."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM mmu_pages WHERE pid = ?", (pid,))

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()
