"""Two processes opening one new SQLite store together: the second waits for the first, it does not fail.

A file still in rollback-journal mode answers the switch to WAL with "database is locked" at once, without
SQLite's busy handler, while another connection holds it (seen as ``castor run`` racing ``castor run``
for one pid on a new store failing with "cannot open SQLite store ... database is locked").
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from castor.backends.sqlite._db import SqliteDatabase, enter_wal
from castor.mmu.drivers.sqlite import SQLiteDriver


@contextmanager
def held(path: Path, seconds: float) -> Iterator[None]:
    """A new file in rollback-journal mode, written to in a transaction another thread ends after ``seconds``."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE making (x)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO making VALUES (1)")
    ender = threading.Timer(seconds, lambda: other.execute("COMMIT"))
    ender.start()
    try:
        yield
    finally:
        ender.join()
        other.close()


def test_the_store_waits_for_another_connection_making_the_file(tmp_path: Path) -> None:
    path = tmp_path / "castor.db"
    with held(path, 0.3):
        started = time.monotonic()
        db = SqliteDatabase(str(path))
        waited = time.monotonic() - started
    assert waited >= 0.2
    assert db.conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.conn.close()


def test_the_mmu_file_waits_too(tmp_path: Path) -> None:
    path = tmp_path / "pages.db"
    with held(path, 0.3):
        driver = SQLiteDriver(path)
    assert driver._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    driver.close()


def test_a_lock_held_past_the_timeout_is_still_an_error(tmp_path: Path) -> None:
    path = tmp_path / "castor.db"
    with held(path, 0.5):
        conn = sqlite3.connect(path, isolation_level=None, timeout=0.05)
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            enter_wal(conn, timeout=0.2)
        assert time.monotonic() - started < 0.45
        conn.close()


def test_a_store_another_process_holds_past_the_timeout_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a bare ``sqlite3.OperationalError``, which a run took for its agent's failure: the store is unavailable,
    as a Redis away is, and the message says why."""
    from castor.backends.sqlite import _db
    from castor.errors import BackendUnavailable

    monkeypatch.setattr(_db, "BUSY_TIMEOUT", 0.2)
    path = tmp_path / "castor.db"
    db = SqliteDatabase(str(path))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        busy = r"is busy: another process held it for more than 0.2 s"
        with pytest.raises(BackendUnavailable, match=busy), db.transaction() as conn:
            conn.execute("INSERT INTO forks VALUES ('a', 'b', 1)")
        with pytest.raises(BackendUnavailable, match="is busy"):
            db.execute("INSERT INTO forks VALUES ('a', 'b', 1)")
    finally:
        other.execute("ROLLBACK")
        other.close()
    with db.transaction() as conn:  # free again: it works, nothing half-done left
        conn.execute("INSERT INTO forks VALUES ('a', 'b', 1)")
    assert db.conn.execute("SELECT count(*) FROM forks").fetchone() == (1,)
    db.conn.close()
