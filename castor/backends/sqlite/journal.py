"""SQLite journal (write-once records, forks sharing a prefix) and run headers."""

from __future__ import annotations

import sqlite3
from typing import Any

from castor.backends.memory import summarize
from castor.backends.sqlite._db import SqliteDatabase
from castor.backends.sqlite.claims import SqliteClaims
from castor.checkpoint import AgentCheckpoint, StepFailure, SyscallRecord
from castor.errors import JournalConflictError, RunExistsError, RunFinishedError
from castor.seams import RunSummary


class SqliteJournal(SqliteClaims):
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
        """One row: the child shares the parent's first ``at_step`` records. In one immediate transaction, so
        two processes forking one child see each other: the same fork again is a no-op, a child with records
        of its own or another fork row ``JournalConflictError``."""
        with self.db.transaction() as conn:
            row = conn.execute("SELECT parent, at_step FROM forks WHERE run_id = ?", (child_id,)).fetchone()
            if row is not None and tuple(row) == (parent_id, at_step):
                return
            owned = conn.execute("SELECT 1 FROM journal WHERE run_id = ? LIMIT 1", (child_id,)).fetchone()
            if row is not None or owned:
                raise JournalConflictError(f"run {child_id!r} has a journal already; it cannot become a fork")
            conn.execute("INSERT INTO forks (run_id, parent, at_step) VALUES (?, ?, ?)", (child_id, parent_id, at_step))
        self._fork_at[child_id] = at_step

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
            for table in ("journal", "failures", "forks", "step_claims"):
                conn.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))


class SqliteRunStore:
    """Run headers as JSON rows, indexed by status."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def save(self, checkpoint: AgentCheckpoint, *, reopen: str | None = None) -> None:
        """Upsert the header; ``RunFinishedError`` over a finished run, unless ``reopen`` names its stored
        status (see ``RunStore.save``). The check is the upsert's own condition: one atomic statement."""
        header = checkpoint.model_dump_json(exclude={"syscall_log", "failures"}, fallback=repr)
        with self.db.lock:
            written = self.db.execute(
                "INSERT INTO runs (pid, status, created_at, updated_at, steps, header) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (pid) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at, "
                "steps = excluded.steps, header = excluded.header "
                "WHERE runs.status NOT IN ('COMPLETED', 'FAILED') OR runs.status = ?",
                (checkpoint.pid, checkpoint.status, checkpoint.created_at, checkpoint.updated_at,
                 len(checkpoint.syscall_log), header, reopen or ""),
            ).rowcount
            if written == 0:
                row = self.db.execute("SELECT status FROM runs WHERE pid = ?", (checkpoint.pid,)).fetchone()
                raise RunFinishedError(checkpoint.pid, row[0] if row else "finished")

    async def create(self, checkpoint: AgentCheckpoint) -> None:
        """Insert a new run's header; ``RunExistsError`` if the pid has another one (the primary key decides;
        the same header again is this creator's retry, a no-op)."""
        header = checkpoint.model_dump_json(exclude={"syscall_log", "failures"}, fallback=repr)
        try:
            self.db.execute(
                "INSERT INTO runs (pid, status, created_at, updated_at, steps, header) VALUES (?, ?, ?, ?, ?, ?)",
                (checkpoint.pid, checkpoint.status, checkpoint.created_at, checkpoint.updated_at,
                 len(checkpoint.syscall_log), header),
            )
        except sqlite3.IntegrityError as exc:
            row = self.db.execute("SELECT header FROM runs WHERE pid = ?", (checkpoint.pid,)).fetchone()
            if row is None or row[0] != header:
                raise RunExistsError(checkpoint.pid) from exc

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


