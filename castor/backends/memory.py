"""In-memory implementations of the state seams: the Python API's default and the tests' double.

State lives in dicts guarded by one lock per store, so tool threads and several event loops in one
process see consistent budgets. Nothing survives the process.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

from castor._errors import AlreadyDecidedError, JournalConflictError, NothingPendingError
from castor.checkpoint import AgentCheckpoint, StepFailure, SyscallRecord
from castor.seams import Backend, Charge, Decision, PendingApproval, RunSummary


class MemoryJournal:
    """Records per run in a dict keyed by step; a fork points at its parent's prefix."""

    def __init__(self) -> None:
        self._steps: dict[str, dict[int, SyscallRecord]] = {}
        self._base: dict[str, tuple[str, int]] = {}
        self._failures: dict[str, list[StepFailure]] = {}

    async def append(self, run_id: str, step: int, record: SyscallRecord) -> None:
        """Write the record of ``step`` once."""
        steps = self._steps.setdefault(run_id, {})
        if step in steps or step < self._base_len(run_id):
            raise JournalConflictError(f"run {run_id!r} step {step} is journaled already")
        steps[step] = record

    def _base_len(self, run_id: str) -> int:
        base = self._base.get(run_id)
        return base[1] if base else 0

    async def get(self, run_id: str, step: int) -> SyscallRecord | None:
        """The record of ``step`` (looked up through fork parents)."""
        while True:
            base = self._base.get(run_id)
            if base is None or step >= base[1]:
                return self._steps.get(run_id, {}).get(step)
            run_id = base[0]

    async def history(self, run_id: str) -> list[SyscallRecord]:
        """All records of the run in step order, contiguous from step 0."""
        out: list[SyscallRecord] = []
        step = 0
        while True:
            record = await self.get(run_id, step)
            if record is None:
                return out
            out.append(record)
            step += 1

    async def length(self, run_id: str) -> int:
        """Number of contiguous steps journaled."""
        steps = self._steps.get(run_id, {})
        n = self._base_len(run_id)
        while n in steps:
            n += 1
        return n

    async def fork(self, parent_id: str, child_id: str, at_step: int) -> None:
        """Share the parent's first ``at_step`` records with ``child_id``."""
        self._base[child_id] = (parent_id, at_step)
        self._steps.setdefault(child_id, {})

    async def record_failure(self, run_id: str, failure: StepFailure) -> None:
        """Keep the failure for audit."""
        self._failures.setdefault(run_id, []).append(failure)

    async def failures(self, run_id: str) -> list[StepFailure]:
        """The run's failures, oldest first."""
        return list(self._failures.get(run_id, []))

    async def delete(self, run_id: str) -> None:
        """Forget the run (forks of it keep working only while it exists)."""
        self._steps.pop(run_id, None)
        self._base.pop(run_id, None)
        self._failures.pop(run_id, None)


class MemoryBudgetStore:
    """Ledgers ``{resource: [limit, used]}`` per run and per scope, charged under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, dict[str, list[float]]] = {}
        self._scopes: dict[str, dict[str, list[float]]] = {}
        self._charged: dict[tuple[str, int], list[tuple[str | None, str, float]]] = {}

    async def open_run(self, run_id: str, limits: Mapping[str, float], used: Mapping[str, float]) -> None:
        """Set the run's ledger."""
        with self._lock:
            self._runs[run_id] = {r: [float(v), float(used.get(r, 0.0))] for r, v in limits.items()}

    def _ledgers(self, run_id: str, scopes: Sequence[str]) -> list[tuple[str | None, dict[str, list[float]]]]:
        ledgers: list[tuple[str | None, dict[str, list[float]]]] = [(None, self._runs.get(run_id, {}))]
        ledgers.extend((s, self._scopes.get(s, {})) for s in scopes)
        return ledgers

    def _short(self, run_id: str, cost: Mapping[str, float], scopes: Sequence[str]) -> Charge | None:
        for scope, ledger in self._ledgers(run_id, scopes):
            for resource, amount in cost.items():
                entry = ledger.get(resource)
                if entry is not None and entry[1] + amount > entry[0] + 1e-9:
                    name = resource if scope is None else f"{scope}:{resource}"
                    return Charge(False, name, max(entry[0] - entry[1], 0.0))
        return None

    async def charge(
        self, run_id: str, step: int, cost: Mapping[str, float], scopes: Sequence[str] = ()
    ) -> Charge:
        """Charge all or nothing; a step charged before is not charged again."""
        with self._lock:
            if (run_id, step) in self._charged:
                return Charge(True)
            short = self._short(run_id, cost, scopes)
            if short is not None:
                return short
            taken: list[tuple[str | None, str, float]] = []
            for scope, ledger in self._ledgers(run_id, scopes):
                for resource, amount in cost.items():
                    entry = ledger.get(resource)
                    if entry is not None:
                        entry[1] += amount
                        taken.append((scope, resource, amount))
            self._charged[(run_id, step)] = taken
            return Charge(True)

    async def can_afford(self, run_id: str, cost: Mapping[str, float], scopes: Sequence[str] = ()) -> Charge:
        """Whether the charge would pass now."""
        with self._lock:
            return self._short(run_id, cost, scopes) or Charge(True)

    async def refund(self, run_id: str, step: int) -> None:
        """Give back what the step took, once."""
        with self._lock:
            for scope, resource, amount in self._charged.pop((run_id, step), []):
                ledger = self._runs.get(run_id) if scope is None else self._scopes.get(scope)
                if ledger and resource in ledger:
                    ledger[resource][1] -= amount

    async def remaining(self, run_id: str, resource: str, scopes: Sequence[str] = ()) -> float:
        """The least that any ledger of the run leaves for ``resource``."""
        with self._lock:
            left = math.inf
            for _scope, ledger in self._ledgers(run_id, scopes):
                entry = ledger.get(resource)
                if entry is not None:
                    left = min(left, max(entry[0] - entry[1], 0.0))
            return left

    async def close_run(self, run_id: str) -> None:
        """Drop the run's ledger and its charge keys."""
        with self._lock:
            self._runs.pop(run_id, None)
            for key in [k for k in self._charged if k[0] == run_id]:
                del self._charged[key]

    async def set_scope(self, scope: str, limits: Mapping[str, float]) -> None:
        """Create or re-limit a scope, keeping its usage."""
        with self._lock:
            ledger = self._scopes.setdefault(scope, {})
            for resource, limit in limits.items():
                ledger.setdefault(resource, [0.0, 0.0])[0] = float(limit)

    async def top_up(self, scope: str, amounts: Mapping[str, float]) -> None:
        """Raise limits."""
        with self._lock:
            ledger = self._scopes.setdefault(scope, {})
            for resource, amount in amounts.items():
                ledger.setdefault(resource, [0.0, 0.0])[0] += float(amount)

    async def reset_scope(self, scope: str) -> None:
        """Zero the usage."""
        with self._lock:
            for entry in self._scopes.get(scope, {}).values():
                entry[1] = 0.0

    async def read_scope(self, scope: str) -> dict[str, tuple[float, float]]:
        """``{resource: (limit, used)}``."""
        with self._lock:
            return {r: (e[0], e[1]) for r, e in self._scopes.get(scope, {}).items()}


class MemoryApprovalStore:
    """Pending calls and decisions in dicts; waiters wake on an asyncio event per step."""

    def __init__(self) -> None:
        self._pending: dict[tuple[str, int], PendingApproval] = {}
        self._decisions: dict[tuple[str, int], Decision] = {}
        self._events: dict[tuple[str, int], asyncio.Event] = {}

    async def request(self, pending: PendingApproval) -> None:
        """Record a pending call unless that step's round has one; a higher ``attempt`` opens a new round."""
        key = (pending.run_id, pending.step)
        prior = self._decisions.get(key)
        if prior is not None:
            if pending.attempt <= prior.attempt:
                return
            del self._decisions[key]  # a new round: the old approval no longer authorizes the step
        current = self._pending.get(key)
        if current is None or current.attempt < pending.attempt:
            self._pending[key] = pending

    async def decide(self, decision: Decision) -> Decision:
        """First decision on the open round wins; it is stamped with that round's attempt."""
        key = (decision.run_id, decision.step)
        if key in self._decisions:
            prior = self._decisions[key]
            raise AlreadyDecidedError(
                f"run {decision.run_id!r} step {decision.step} was decided already: "
                f"{prior.outcome} by {prior.by}"
            )
        if key not in self._pending:
            raise NothingPendingError(f"run {decision.run_id!r} has no pending call at step {decision.step}")
        decision = replace(decision, attempt=self._pending.pop(key).attempt)
        self._decisions[key] = decision
        event = self._events.pop(key, None)
        if event is not None:
            event.set()
        return decision

    async def decision(self, run_id: str, step: int) -> Decision | None:
        """The decision on the step, if any."""
        return self._decisions.get((run_id, step))

    async def pending(self, run_id: str | None = None) -> list[PendingApproval]:
        """Waiting calls, oldest first."""
        items = [p for p in self._pending.values() if run_id is None or p.run_id == run_id]
        return sorted(items, key=lambda p: p.created_at)

    async def wait(self, run_id: str, step: int, timeout: float | None = None) -> Decision | None:
        """Block until the step is decided (or ``timeout``)."""
        key = (run_id, step)
        if key in self._decisions:
            return self._decisions[key]
        event = self._events.setdefault(key, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return None
        return self._decisions.get(key)

    async def clear(self, run_id: str) -> None:
        """Forget the run's approvals."""
        for table in (self._pending, self._decisions):
            for key in [k for k in table if k[0] == run_id]:
                del table[key]


class MemoryRunStore:
    """Run headers as checkpoints without journals."""

    def __init__(self) -> None:
        self._runs: dict[str, AgentCheckpoint] = {}
        self._steps: dict[str, int] = {}

    async def save(self, checkpoint: AgentCheckpoint) -> None:
        """Keep a header copy (the journal is the Journal's)."""
        self._runs[checkpoint.pid] = checkpoint.model_copy(update={"syscall_log": []})
        self._steps[checkpoint.pid] = len(checkpoint.syscall_log)

    async def load(self, pid: str) -> AgentCheckpoint | None:
        """A fresh copy of the header."""
        header = self._runs.get(pid)
        return header.model_copy(deep=True) if header is not None else None

    async def list(self, status: str | None = None, limit: int = 100, offset: int = 0) -> list[RunSummary]:
        """Newest first."""
        rows = [cp for cp in self._runs.values() if status is None or cp.status == status]
        rows.sort(key=lambda cp: cp.created_at, reverse=True)
        return [summarize(cp, self._steps.get(cp.pid, 0)) for cp in rows[offset : offset + limit]]

    async def delete(self, pid: str) -> None:
        """Forget the run."""
        self._runs.pop(pid, None)
        self._steps.pop(pid, None)


def summarize(cp: AgentCheckpoint, steps: int, owner: str | None = None) -> RunSummary:
    """The ``ps`` line of a checkpoint header."""
    return RunSummary(
        pid=cp.pid,
        status=cp.status,
        agent=cp.agent_function_name,
        parent_pid=cp.parent_pid,
        pending_tool=cp.pending_tool,
        steps=steps,
        created_at=cp.created_at,
        updated_at=cp.updated_at or time.time(),
        owner=owner,
    )


def memory_backend() -> Backend:
    """A fresh in-memory bundle."""
    return Backend(MemoryJournal(), MemoryBudgetStore(), MemoryApprovalStore(), MemoryRunStore(), "memory://")
