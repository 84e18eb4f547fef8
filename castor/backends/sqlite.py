"""SQLite implementations of the state seams: the embedded default, one local file, stdlib ``sqlite3``.

One connection per backend in WAL mode: readers in other processes (``castor ps``) never block the
run, and a committed step survives a killed process. Statements are short and run inline; the
connection is guarded by a lock because tool threads and several event loops may share a kernel.

Per-run budgets live in memory while the run is driven by this process: the journal record of each
step carries what it was charged, committed with the record, so a resumed run reopens its ledger from
its journal and a charge becomes durable exactly when its step does. Shared scopes, which other runs
and processes draw from, are SQLite rows changed in one transaction per charge.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from castor._errors import (
    AlreadyDecidedError,
    BackendUnavailable,
    ConfigError,
    JournalConflictError,
    NothingPendingError,
)
from castor.backends.memory import MemoryBudgetStore, summarize
from castor.checkpoint import AgentCheckpoint, StepFailure, SyscallRecord
from castor.seams import Backend, Charge, Decision, PendingApproval, RunSummary

SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (run_id TEXT, step INTEGER, record TEXT NOT NULL,
    PRIMARY KEY (run_id, step)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS forks (run_id TEXT PRIMARY KEY, parent TEXT NOT NULL, at_step INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS failures (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS failures_run ON failures (run_id);
CREATE TABLE IF NOT EXISTS scopes (scope TEXT, resource TEXT, lim REAL NOT NULL, used REAL NOT NULL,
    PRIMARY KEY (scope, resource)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scope_charges (run_id TEXT, step INTEGER, scope TEXT, resource TEXT, amount REAL,
    PRIMARY KEY (run_id, step, scope, resource)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS approvals (run_id TEXT, step INTEGER, tool TEXT NOT NULL, arguments TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL, reason TEXT NOT NULL DEFAULT '', outcome TEXT,
    decided_by TEXT, decided_at REAL, feedback TEXT, PRIMARY KEY (run_id, step)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (pid TEXT PRIMARY KEY, status TEXT NOT NULL, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, steps INTEGER NOT NULL, header TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, created_at);
"""

SYNC_MODES = ("OFF", "NORMAL", "FULL")


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
            self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self.conn.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise BackendUnavailable(f"cannot open SQLite store {path!r}: {exc}") from exc
        self.closed = False

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error), under the lock."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """One autocommitted statement."""
        with self.lock:
            try:
                return self.conn.execute(sql, params)
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise BackendUnavailable(f"SQLite store {self.path!r}: {exc}") from exc

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        with self.lock:
            if not self.closed:
                self.closed = True
                self.conn.close()


class SqliteJournal:
    """Write-once records keyed by (run, step); a fork row points at the parent's prefix."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        self._fork_at: dict[str, int] = {}  # a fork point never changes once made, so it may be cached

    def _shared_until(self, run_id: str) -> int:
        at = self._fork_at.get(run_id)
        if at is None:
            row = self.db.execute("SELECT at_step FROM forks WHERE run_id = ?", (run_id,)).fetchone()
            at = self._fork_at[run_id] = row[0] if row else 0
        return at

    async def append(self, run_id: str, step: int, record: SyscallRecord) -> None:
        """Insert the record; a second write of the step (or of a step shared from a parent) is refused."""
        if step < self._shared_until(run_id):
            raise JournalConflictError(f"run {run_id!r} step {step} is shared from the run it was forked from")
        data = record.model_dump_json(exclude_defaults=True, fallback=repr)  # smaller rows insert faster
        try:
            self.db.execute("INSERT INTO journal (run_id, step, record) VALUES (?, ?, ?)", (run_id, step, data))
        except sqlite3.IntegrityError as exc:
            raise JournalConflictError(f"run {run_id!r} step {step} is journaled already") from exc

    def _chain(self, run_id: str) -> list[tuple[str, int, int | None]]:
        """``(run, first step, end step or None)`` segments from the oldest ancestor to ``run_id``."""
        segments: list[tuple[str, int, int | None]] = []
        end: int | None = None
        while True:
            row = self.db.execute("SELECT parent, at_step FROM forks WHERE run_id = ?", (run_id,)).fetchone()
            segments.append((run_id, row[1] if row else 0, end))
            if not row:
                return segments[::-1]
            run_id, end = row[0], row[1]

    def _rows(self, owner: str, start: int, end: int | None, columns: str) -> list[Any]:
        sql = f"SELECT {columns} FROM journal WHERE run_id = ? AND step >= ?"
        params: list[Any] = [owner, start]
        if end is not None:
            sql += " AND step < ?"
            params.append(end)
        return self.db.execute(sql + " ORDER BY step", params).fetchall()

    async def get(self, run_id: str, step: int) -> SyscallRecord | None:
        """The record of ``step``, looked up in the segment of the fork chain that holds it."""
        for owner, start, end in self._chain(run_id):
            if start <= step and (end is None or step < end):
                row = self.db.execute(
                    "SELECT record FROM journal WHERE run_id = ? AND step = ?", (owner, step)
                ).fetchone()
                return SyscallRecord.model_validate_json(row[0]) if row else None
        return None

    async def history(self, run_id: str) -> list[SyscallRecord]:
        """Contiguous records from step 0, through the fork chain."""
        return [SyscallRecord.model_validate_json(data) for data in self._contiguous(run_id, "step, record")]

    def _contiguous(self, run_id: str, columns: str) -> list[Any]:
        out: list[Any] = []
        for owner, start, end in self._chain(run_id):
            for row in self._rows(owner, start, end, columns):
                if row[0] != len(out):
                    return out
                out.append(row[1] if len(row) > 1 else row[0])
            if end is not None and len(out) < end:
                return out
        return out

    async def length(self, run_id: str) -> int:
        """How many contiguous steps are journaled."""
        return len(self._contiguous(run_id, "step"))

    async def fork(self, parent_id: str, child_id: str, at_step: int) -> None:
        """One row: the child shares the parent's first ``at_step`` records."""
        self._fork_at[child_id] = at_step
        self.db.execute(
            "INSERT OR REPLACE INTO forks (run_id, parent, at_step) VALUES (?, ?, ?)", (child_id, parent_id, at_step)
        )

    async def record_failure(self, run_id: str, failure: StepFailure) -> None:
        """Keep a failure for audit."""
        self.db.execute("INSERT INTO failures (run_id, data) VALUES (?, ?)", (run_id, failure.model_dump_json()))

    async def failures(self, run_id: str) -> list[StepFailure]:
        """Failures, oldest first."""
        rows = self.db.execute("SELECT data FROM failures WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()
        return [StepFailure.model_validate_json(r[0]) for r in rows]

    async def close(self) -> None:
        """Close the shared connection."""
        await self.db.close()

    async def delete(self, run_id: str) -> None:
        """Forget the run's records, failures and fork pointer."""
        self._fork_at.pop(run_id, None)
        with self.db.transaction() as conn:
            for table in ("journal", "failures", "forks"):
                conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))


class SqliteBudgetStore(MemoryBudgetStore):
    """Run ledgers in memory (made durable by the journal); shared scopes in SQLite transactions."""

    def __init__(self, db: SqliteDatabase) -> None:
        super().__init__()
        self.db = db

    def _scope_rows(self, conn: sqlite3.Connection, scopes: Sequence[str], cost: Mapping[str, float]) -> list[Any]:
        rows: list[Any] = []
        for scope in scopes:
            for resource in cost:
                row = conn.execute(
                    "SELECT lim, used FROM scopes WHERE scope = ? AND resource = ?", (scope, resource)
                ).fetchone()
                if row is not None:
                    rows.append((scope, resource, row[0], row[1]))
        return rows

    async def charge(
        self, run_id: str, step: int, cost: Mapping[str, float], scopes: Sequence[str] = ()
    ) -> Charge:
        """All or nothing over the run ledger and every scope."""
        if not scopes:
            return await super().charge(run_id, step, cost)
        with self.db.transaction() as conn:
            done = conn.execute(
                "SELECT 1 FROM scope_charges WHERE run_id = ? AND step = ? LIMIT 1", (run_id, step)
            ).fetchone()
            if done:
                return Charge(True)
            rows = self._scope_rows(conn, scopes, cost)
            for scope, resource, lim, used in rows:
                if used + cost[resource] > lim + 1e-9:
                    return Charge(False, f"{scope}:{resource}", max(lim - used, 0.0))
            local = await super().charge(run_id, step, cost)
            if not local.ok:
                return local
            for scope, resource, _lim, _used in rows:
                amount = cost[resource]
                conn.execute(
                    "UPDATE scopes SET used = used + ? WHERE scope = ? AND resource = ?", (amount, scope, resource)
                )
                conn.execute(
                    "INSERT INTO scope_charges VALUES (?, ?, ?, ?, ?)", (run_id, step, scope, resource, amount)
                )
        return Charge(True)

    async def can_afford(self, run_id: str, cost: Mapping[str, float], scopes: Sequence[str] = ()) -> Charge:
        """Whether a charge would pass now."""
        local = await super().can_afford(run_id, cost)
        if not local.ok or not scopes:
            return local
        with self.db.lock:
            for scope, resource, lim, used in self._scope_rows(self.db.conn, scopes, cost):
                if used + cost[resource] > lim + 1e-9:
                    return Charge(False, f"{scope}:{resource}", max(lim - used, 0.0))
        return Charge(True)

    async def refund(self, run_id: str, step: int) -> None:
        """Give back the step's charge once, in the run and in the scopes."""
        await super().refund(run_id, step)
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT scope, resource, amount FROM scope_charges WHERE run_id = ? AND step = ?", (run_id, step)
            ).fetchall()
            for scope, resource, amount in rows:
                conn.execute(
                    "UPDATE scopes SET used = used - ? WHERE scope = ? AND resource = ?", (amount, scope, resource)
                )
            conn.execute("DELETE FROM scope_charges WHERE run_id = ? AND step = ?", (run_id, step))

    async def remaining(self, run_id: str, resource: str, scopes: Sequence[str] = ()) -> float:
        """The least any ledger leaves."""
        left = await super().remaining(run_id, resource)
        for scope in scopes:
            limits = await self.read_scope(scope)
            if resource in limits:
                lim, used = limits[resource]
                left = min(left, max(lim - used, 0.0))
        return left

    async def set_scope(self, scope: str, limits: Mapping[str, float]) -> None:
        """Create or re-limit a scope."""
        with self.db.transaction() as conn:
            for resource, lim in limits.items():
                conn.execute(
                    "INSERT INTO scopes VALUES (?, ?, ?, 0) ON CONFLICT (scope, resource) DO UPDATE SET lim = ?",
                    (scope, resource, float(lim), float(lim)),
                )

    async def top_up(self, scope: str, amounts: Mapping[str, float]) -> None:
        """Raise limits."""
        with self.db.transaction() as conn:
            for resource, amount in amounts.items():
                conn.execute(
                    "INSERT INTO scopes VALUES (?, ?, ?, 0) ON CONFLICT (scope, resource) DO UPDATE SET lim = lim + ?",
                    (scope, resource, float(amount), float(amount)),
                )

    async def reset_scope(self, scope: str) -> None:
        """Zero usage."""
        self.db.execute("UPDATE scopes SET used = 0 WHERE scope = ?", (scope,))

    async def read_scope(self, scope: str) -> dict[str, tuple[float, float]]:
        """``{resource: (limit, used)}``."""
        rows = self.db.execute("SELECT resource, lim, used FROM scopes WHERE scope = ?", (scope,)).fetchall()
        return {r: (lim, used) for r, lim, used in rows}


class SqliteApprovalStore:
    """Pending calls and decisions in one table; ``wait`` polls, since another process may decide."""

    poll_interval = 0.05

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def request(self, pending: PendingApproval) -> None:
        """Insert unless the step has a row."""
        self.db.execute(
            "INSERT OR IGNORE INTO approvals (run_id, step, tool, arguments, created_at, expires_at, reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (pending.run_id, pending.step, pending.tool_name, json.dumps(pending.arguments, default=repr),
             pending.created_at, pending.expires_at, pending.reason),
        )

    async def decide(self, decision: Decision) -> Decision:
        """First decision wins, atomically."""
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT outcome, decided_by FROM approvals WHERE run_id = ? AND step = ?",
                (decision.run_id, decision.step),
            ).fetchone()
            if row is None:
                raise NothingPendingError(f"run {decision.run_id!r} has no pending call at step {decision.step}")
            if row[0] is not None:
                raise AlreadyDecidedError(
                    f"run {decision.run_id!r} step {decision.step} was decided already: {row[0]} by {row[1]}"
                )
            conn.execute(
                "UPDATE approvals SET outcome = ?, decided_by = ?, decided_at = ?, feedback = ? "
                "WHERE run_id = ? AND step = ?",
                (decision.outcome, decision.by, decision.at, decision.reason, decision.run_id, decision.step),
            )
        return decision

    async def decision(self, run_id: str, step: int) -> Decision | None:
        """The decision on a step."""
        row = self.db.execute(
            "SELECT outcome, decided_by, decided_at, feedback FROM approvals "
            "WHERE run_id = ? AND step = ? AND outcome IS NOT NULL",
            (run_id, step),
        ).fetchone()
        return Decision(run_id, step, row[0], row[1], row[2], row[3] or "") if row else None

    async def pending(self, run_id: str | None = None) -> list[PendingApproval]:
        """Undecided calls, oldest first."""
        sql = (
            "SELECT run_id, step, tool, arguments, created_at, expires_at, reason FROM approvals "
            "WHERE outcome IS NULL"
        )
        params: tuple[Any, ...] = ()
        if run_id is not None:
            sql += " AND run_id = ?"
            params = (run_id,)
        rows = self.db.execute(sql + " ORDER BY created_at", params).fetchall()
        return [PendingApproval(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6]) for r in rows]

    async def wait(self, run_id: str, step: int, timeout: float | None = None) -> Decision | None:
        """Poll until decided or ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            found = await self.decision(run_id, step)
            if found is not None:
                return found
            if deadline is not None and time.monotonic() >= deadline:
                return None
            await asyncio.sleep(self.poll_interval)

    async def clear(self, run_id: str) -> None:
        """Forget the run's approvals."""
        self.db.execute("DELETE FROM approvals WHERE run_id = ?", (run_id,))


class SqliteRunStore:
    """Run headers as JSON rows, indexed by status."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def save(self, checkpoint: AgentCheckpoint) -> None:
        """Upsert the header."""
        header = checkpoint.model_dump_json(exclude={"syscall_log", "failures"}, fallback=repr)
        self.db.execute(
            "INSERT INTO runs (pid, status, created_at, updated_at, steps, header) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (pid) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at, "
            "steps = excluded.steps, header = excluded.header",
            (checkpoint.pid, checkpoint.status, checkpoint.created_at, checkpoint.updated_at,
             len(checkpoint.syscall_log), header),
        )

    async def load(self, pid: str) -> AgentCheckpoint | None:
        """The header, or None."""
        row = self.db.execute("SELECT header FROM runs WHERE pid = ?", (pid,)).fetchone()
        return AgentCheckpoint.model_validate_json(row[0]) if row else None

    async def list(self, status: str | None = None, limit: int = 100, offset: int = 0) -> list[RunSummary]:
        """Newest first."""
        sql, params = "SELECT header, steps FROM runs", []
        if status is not None:
            sql += " WHERE status = ?"
            params.append(status)
        sql += " ORDER BY created_at DESC LIMIT ? OFFSET ?"
        rows = self.db.execute(sql, [*params, limit, offset]).fetchall()
        return [summarize(AgentCheckpoint.model_validate_json(h), steps) for h, steps in rows]

    async def delete(self, pid: str) -> None:
        """Forget the run."""
        self.db.execute("DELETE FROM runs WHERE pid = ?", (pid,))


def sqlite_backend(path: str, *, synchronous: str = "NORMAL") -> Backend:
    """A bundle of SQLite stores sharing one connection to ``path``."""
    db = SqliteDatabase(path, synchronous=synchronous)
    backend = Backend(
        SqliteJournal(db), SqliteBudgetStore(db), SqliteApprovalStore(db), SqliteRunStore(db),
        url=f"sqlite:///{path}", durable=path != ":memory:",
    )
    return backend
