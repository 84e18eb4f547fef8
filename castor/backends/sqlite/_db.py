"""The one SQLite connection a backend shares: schema, WAL mode, a lock, short transactions."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from castor.errors import BackendUnavailable, ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (run_id TEXT, step INTEGER, record TEXT NOT NULL,
    PRIMARY KEY (run_id, step)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS forks (run_id TEXT PRIMARY KEY, parent TEXT NOT NULL, at_step INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS failures (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS failures_run ON failures (run_id);
CREATE TABLE IF NOT EXISTS step_claims (run_id TEXT, step INTEGER, attempt INTEGER NOT NULL, holder TEXT NOT NULL,
    lease_end REAL NOT NULL, PRIMARY KEY (run_id, step)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scopes (scope TEXT, resource TEXT, lim REAL NOT NULL, used REAL NOT NULL,
    PRIMARY KEY (scope, resource)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scope_charges (run_id TEXT, step INTEGER, scope TEXT, resource TEXT, amount REAL,
    PRIMARY KEY (run_id, step, scope, resource)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS approvals (run_id TEXT, step INTEGER, tool TEXT NOT NULL, arguments TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL, reason TEXT NOT NULL DEFAULT '', outcome TEXT,
    decided_by TEXT, decided_at REAL, feedback TEXT, attempt INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, step)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (pid TEXT PRIMARY KEY, status TEXT NOT NULL, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, steps INTEGER NOT NULL, header TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, created_at);
"""

SYNC_MODES = ("OFF", "NORMAL", "FULL")
WAL_AUTOCHECKPOINT_PAGES = 10_000
BUSY_TIMEOUT = 10.0


def _busy(error: sqlite3.Error) -> bool:
    """Whether ``error`` is another connection holding the file ("database is locked", or busy)."""
    return "locked" in str(error) or "busy" in str(error)


def enter_wal(conn: sqlite3.Connection, timeout: float = BUSY_TIMEOUT) -> None:
    """Put the file in WAL mode, waiting out another process that holds it meanwhile.

    A file still in rollback-journal mode (a new one, while another process is making it) answers
    ``PRAGMA journal_mode=WAL`` with "database is locked" at once, without SQLite's busy handler: so two
    processes opening a new store together could see one fail. The switch is asked again, pauses doubling,
    until the same timeout every other statement waits for a lock.
    """
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _add_column(conn: sqlite3.Connection, table: str, column: str) -> None:
    """Give a table made by an earlier version a column it lacks (another process may be doing it too)."""
    name = column.split()[0]
    if any(row[1] == name for row in conn.execute(f"PRAGMA table_info({table})")):
        return
    try:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc):
            raise


class SqliteDatabase:
    """The shared connection of one backend."""

    def __init__(self, path: str, *, synchronous: str = "NORMAL") -> None:
        if synchronous.upper() not in SYNC_MODES:
            raise ConfigError(f"sqlite synchronous must be one of {', '.join(SYNC_MODES)}, got {synchronous!r}")
        self.path = path
        self.lock = threading.RLock()
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT)
            enter_wal(self.conn)
            self.conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            # By default a checkpoint (the WAL copied back into the database, with fsyncs) runs every 1,000
            # pages, about every 1,000 steps, and costs each step ~7 µs amortized. Every 10,000 pages costs
            # a tenth of that; the WAL stays under ~40 MB and is folded back when the store is closed.
            # Durability against a killed process is the same: a committed step is in the WAL either way.
            self.conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            self.conn.executescript(SCHEMA)
            _add_column(self.conn, "approvals", "attempt INTEGER NOT NULL DEFAULT 0")  # files made before rounds
        except (sqlite3.Error, OSError) as exc:
            raise BackendUnavailable(f"cannot open SQLite store {path!r}: {exc}") from exc
        self.closed = False

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error), under the lock. The store's own failures
        (another process holding the file past the busy timeout, a full disk) are ``BackendUnavailable``: the
        run stops as when Redis is away, to be resumed; an ``IntegrityError`` is the caller's to read."""
        with self.lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise self.unavailable(exc) from exc
            try:
                yield self.conn
            except BaseException as exc:
                self.conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise self.unavailable(exc) from exc
                raise
            try:
                self.conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise self.unavailable(exc) from exc

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """One autocommitted statement."""
        with self.lock:
            try:
                return self.conn.execute(sql, params)
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise self.unavailable(exc) from exc

    def unavailable(self, error: sqlite3.Error) -> BackendUnavailable:
        """The one-line error of the store failing ``error``: a file another process held past the busy timeout
        says so."""
        if _busy(error):
            return BackendUnavailable(f"SQLite store {self.path!r} is busy: another process held it for more than "
                                      f"{BUSY_TIMEOUT:g} s ({error}); try again once it is free")
        return BackendUnavailable(f"SQLite store {self.path!r}: {error}")

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        with self.lock:
            if not self.closed:
                self.closed = True
                self.conn.close()


