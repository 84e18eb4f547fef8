"""SQLite budgets (shared scopes in transactions) and approvals (first decision wins)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from castor.backends.memory import MemoryBudgetStore
from castor.backends.memory.state import expiry
from castor.backends.sqlite._db import SqliteDatabase
from castor.errors import AlreadyDecidedError, NothingPendingError
from castor.seams import Charge, Decision, PendingApproval


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
                conn.execute(  # a reset since may have spent part of the usage: never below zero
                    "UPDATE scopes SET used = MAX(used - ?, 0) WHERE scope = ? AND resource = ?",
                    (amount, scope, resource),
                )
            conn.execute("DELETE FROM scope_charges WHERE run_id = ? AND step = ?", (run_id, step))

    async def settle(
        self, run_id: str, step: int, actual: Mapping[str, float], scopes: Sequence[str] = ()
    ) -> None:
        """Replace what the step took by ``actual`` (a model call's usage), in the run and in the scopes."""
        await super().settle(run_id, step, actual)
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT scope, resource, amount FROM scope_charges WHERE run_id = ? AND step = ?", (run_id, step)
            ).fetchall()
            for scope, resource, amount in rows:
                if not amount:
                    continue  # a reset since spent the reservation (reset_scope zeroes it)
                used = float(actual.get(resource, 0.0))
                conn.execute(
                    "UPDATE scopes SET used = MAX(used - ? + ?, 0) WHERE scope = ? AND resource = ?",
                    (amount, used, scope, resource),
                )
                conn.execute(
                    "UPDATE scope_charges SET amount = ? WHERE run_id = ? AND step = ? AND scope = ? AND resource = ?",
                    (used, run_id, step, scope, resource),
                )

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
        """Zero usage. Charges taken before are spent: their ledger entries keep the step (a charge of it
        again stays a no-op) but give nothing back, so a refund never crosses a reset."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE scopes SET used = 0 WHERE scope = ?", (scope,))
            conn.execute("UPDATE scope_charges SET amount = 0 WHERE scope = ?", (scope,))

    async def read_scope(self, scope: str) -> dict[str, tuple[float, float]]:
        """``{resource: (limit, used)}``."""
        rows = self.db.execute("SELECT resource, lim, used FROM scopes WHERE scope = ?", (scope,)).fetchall()
        return {r: (lim, used) for r, lim, used in rows}


_REQUEST_COLUMNS = "run_id, step, tool, arguments, created_at, expires_at, reason, attempt"


def _request(row: Any) -> PendingApproval:
    """A ``PendingApproval`` from a row of ``_REQUEST_COLUMNS``."""
    return PendingApproval(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], row[6], attempt=row[7])


class SqliteApprovalStore:
    """Pending calls and decisions in one table; ``wait`` polls, since another process may decide."""

    poll_interval = 0.05

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def request(self, pending: PendingApproval) -> None:
        """Insert unless the step has a row; a later round (``attempt``) replaces the row, its decision
        dropped: it no longer authorizes the step."""
        values = (pending.tool_name, json.dumps(pending.arguments, default=repr), pending.created_at,
                  pending.expires_at, pending.reason, pending.attempt, pending.run_id, pending.step)
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO approvals (tool, arguments, created_at, expires_at, reason, attempt, run_id, "
                "step) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            conn.execute(
                "UPDATE approvals SET tool = ?, arguments = ?, created_at = ?, expires_at = ?, reason = ?, "
                "attempt = ?, outcome = NULL, decided_by = NULL, decided_at = NULL, feedback = NULL "
                "WHERE run_id = ? AND step = ? AND attempt < ?",
                (*values, pending.attempt),
            )

    async def decide(self, decision: Decision) -> Decision:
        """First decision wins, atomically."""
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT outcome, decided_by, attempt, expires_at, decided_at, feedback FROM approvals "
                "WHERE run_id = ? AND step = ?",
                (decision.run_id, decision.step),
            ).fetchone()
            if row is None:
                raise NothingPendingError(f"run {decision.run_id!r} has no pending call at step {decision.step}")
            if row[0] is not None:
                outcome, by, _, _, at, reason = row
                raise AlreadyDecidedError(decision.run_id, decision.step, outcome, by, at=at, reason=reason or "")
            decision = replace(decision, attempt=row[2])
            expired = row[3] is not None and row[3] <= time.time()  # this machine's clock: the store's
            if expired:
                decision = expiry(decision)
            conn.execute(
                "UPDATE approvals SET outcome = ?, decided_by = ?, decided_at = ?, feedback = ? "
                "WHERE run_id = ? AND step = ?",
                (decision.outcome, decision.by, decision.at, decision.reason, decision.run_id, decision.step),
            )
        if expired:
            raise AlreadyDecidedError(
                decision.run_id, decision.step, decision.outcome, decision.by, at=decision.at, reason=decision.reason
            )
        return decision

    async def decision(self, run_id: str, step: int) -> Decision | None:
        """The decision on a step."""
        row = self.db.execute(
            "SELECT outcome, decided_by, decided_at, feedback, attempt FROM approvals "
            "WHERE run_id = ? AND step = ? AND outcome IS NOT NULL",
            (run_id, step),
        ).fetchone()
        return Decision(run_id, step, row[0], row[1], row[2], row[3] or "", row[4]) if row else None

    async def decided_request(self, run_id: str, step: int) -> PendingApproval | None:
        """The request the step's decision answered: its row, once it has an outcome."""
        row = self.db.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM approvals WHERE run_id = ? AND step = ? AND outcome IS NOT NULL",
            (run_id, step),
        ).fetchone()
        return _request(row) if row else None

    async def pending(self, run_id: str | None = None) -> list[PendingApproval]:
        """Undecided calls, oldest first."""
        sql = f"SELECT {_REQUEST_COLUMNS} FROM approvals WHERE outcome IS NULL"
        params: tuple[Any, ...] = ()
        if run_id is not None:
            sql += " AND run_id = ?"
            params = (run_id,)
        rows = self.db.execute(sql + " ORDER BY created_at", params).fetchall()
        return [_request(r) for r in rows]

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


