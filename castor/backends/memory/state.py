"""In-memory budgets (ledgers under one lock) and approvals (first decision wins, events wake waiters)."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

from castor.errors import AlreadyDecidedError, NothingPendingError
from castor.seams import Charge, Decision, PendingApproval

_OK = Charge(True)
EXPIRY_BY = "castor-expiry"  # who a call that expired undecided is decided by (as in the Redis store)
EXPIRY_REASON = "approval expired"


def expiry(decision: Decision) -> Decision:
    """The decision an expired call gets instead of ``decision``: a rejection, by the expiry."""
    return replace(decision, outcome="reject", by=EXPIRY_BY, reason=EXPIRY_REASON)
# What a step took: from the run's ledger alone, that ledger and the cost (its tracked resources are known);
# with scopes, (scope or None, resource, amount, the ledger entry drawn from) quadruples. A refund gives
# back only to the entry it took from: a reset or a reopened ledger has new entries, so a charge taken
# before it is spent, never refunded into the new period.
Entry = list[float]
Taken = tuple[dict[str, Entry], Mapping[str, float]] | list[tuple[str | None, str, float, Entry]]


class MemoryBudgetStore:
    """Ledgers ``{resource: [limit, used]}`` per run and per scope, charged under one lock."""

    # A charge of nothing is never refused here (no lease to check): the kernel skips making it.
    empty_charges_checked = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, dict[str, list[float]]] = {}
        self._scopes: dict[str, dict[str, list[float]]] = {}
        self._charged: dict[str, dict[int, Taken]] = {}

    async def open_run(self, run_id: str, limits: Mapping[str, float], used: Mapping[str, float]) -> None:
        """Set the run's ledger."""
        with self._lock:
            self._runs[run_id] = {r: [float(v), float(used.get(r, 0.0))] for r, v in limits.items()}
            self._charged.setdefault(run_id, {})

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
        if not cost:
            return _OK  # nothing to take, nothing to record
        with self._lock:
            steps = self._charged.get(run_id)
            if steps is None:
                steps = self._charged[run_id] = {}
            elif step in steps:
                self._carry(run_id, step, steps)
                return _OK
            if not scopes:
                return self._charge_run(run_id, step, cost, steps)
            short = self._short(run_id, cost, scopes)
            if short is not None:
                return short
            taken: list[tuple[str | None, str, float, Entry]] = []
            for scope, ledger in self._ledgers(run_id, scopes):
                for resource, amount in cost.items():
                    entry = ledger.get(resource)
                    if entry is not None:
                        entry[1] += amount
                        taken.append((scope, resource, amount, entry))
            steps[step] = taken
            return _OK

    def _carry(self, run_id: str, step: int, steps: dict[int, Taken]) -> None:
        """A step charged again after the run's ledger was reopened (another process took the run over while
        the call that took the charge was in flight): the reopened ledger, whose usage came from the journal,
        counts it now, and a refund gives it back there. (A ledger reopened after the step was journaled
        never sees it charged again: replay serves it.)"""
        ledger = self._runs.get(run_id)
        if not ledger:
            return
        taken = steps[step]
        if isinstance(taken, tuple):
            old, cost = taken
            if old is not ledger:
                for resource, amount in cost.items():
                    entry = ledger.get(resource)
                    if entry is not None:
                        entry[1] += amount
                steps[step] = (ledger, cost)
            return
        for n, (scope, resource, amount, entry) in enumerate(taken):
            now = ledger.get(resource)
            if scope is None and now is not None and now is not entry:
                now[1] += amount
                taken[n] = (scope, resource, amount, now)

    def _charge_run(self, run_id: str, step: int, cost: Mapping[str, float], steps: dict[int, Taken]) -> Charge:
        # The common case (no shared scope) in one pass over the run's ledger.
        ledger = self._runs.get(run_id)
        if ledger:
            for resource, amount in cost.items():
                entry = ledger.get(resource)
                if entry is not None and entry[1] + amount > entry[0] + 1e-9:
                    return Charge(False, resource, max(entry[0] - entry[1], 0.0))
            for resource, amount in cost.items():
                entry = ledger.get(resource)
                if entry is not None:
                    entry[1] += amount
        steps[step] = (ledger or {}, cost)
        return _OK

    async def can_afford(self, run_id: str, cost: Mapping[str, float], scopes: Sequence[str] = ()) -> Charge:
        """Whether the charge would pass now."""
        with self._lock:
            return self._short(run_id, cost, scopes) or _OK

    async def refund(self, run_id: str, step: int) -> None:
        """Give back what the step took, once."""
        with self._lock:
            taken = self._charged.get(run_id, {}).pop(step, None)
            if isinstance(taken, tuple):
                ledger, cost = taken
                taken = [(None, r, amount, ledger[r]) for r, amount in cost.items() if r in ledger]
            for scope, resource, amount, entry in taken or ():
                now = self._runs.get(run_id) if scope is None else self._scopes.get(scope)
                if now and now.get(resource) is entry:  # else reset or reopened since: spent
                    entry[1] = max(entry[1] - amount, 0.0)

    async def settle(
        self, run_id: str, step: int, actual: Mapping[str, float], scopes: Sequence[str] = ()
    ) -> None:
        """Replace what the step took by ``actual`` (a model call's reservation by its usage), in one move.

        Each ledger the reservation drew from gets back the difference (or gives more, if the call used
        more than reserved); a ledger reset or reopened since keeps its new entry (the reset spent the
        reservation).
        """
        with self._lock:
            steps = self._charged.setdefault(run_id, {})
            taken = steps.pop(step, None)
            if taken is None:
                return  # never charged (nothing tracked) or refunded since: nothing to settle
            if isinstance(taken, tuple):  # the run's ledger alone (no scope): the common case, in place
                ledger, cost = taken
                if self._runs.get(run_id) is not ledger:
                    return  # reopened since: what it took is spent
                for resource, amount in cost.items():
                    entry = ledger.get(resource)
                    if entry is not None:
                        entry[1] = max(entry[1] - amount + float(actual.get(resource, 0.0)), 0.0)
                steps[step] = (ledger, {r: float(actual.get(r, 0.0)) for r in cost})
                return
            settled: list[tuple[str | None, str, float, Entry]] = []
            for scope, resource, amount, entry in taken:
                now = self._runs.get(run_id) if scope is None else self._scopes.get(scope)
                if not now or now.get(resource) is not entry:
                    continue  # reset or reopened since: what it took is spent
                used = float(actual.get(resource, 0.0))
                entry[1] = max(entry[1] - amount + used, 0.0)
                settled.append((scope, resource, used, entry))
            steps[step] = settled

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
            self._charged.pop(run_id, None)

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
        """Zero the usage; charges taken before are spent (new entries: a refund never crosses a reset)."""
        with self._lock:
            ledger = self._scopes.get(scope, {})
            for resource, entry in ledger.items():
                ledger[resource] = [entry[0], 0.0]

    async def read_scope(self, scope: str) -> dict[str, tuple[float, float]]:
        """``{resource: (limit, used)}``."""
        with self._lock:
            return {r: (e[0], e[1]) for r, e in self._scopes.get(scope, {}).items()}


class MemoryApprovalStore:
    """Pending calls and decisions in dicts; waiters wake on an asyncio event per step."""

    def __init__(self) -> None:
        self._pending: dict[tuple[str, int], PendingApproval] = {}
        self._decisions: dict[tuple[str, int], Decision] = {}
        self._decided: dict[tuple[str, int], PendingApproval] = {}  # the request each decision answered
        self._events: dict[tuple[str, int], asyncio.Event] = {}

    async def request(self, pending: PendingApproval) -> None:
        """Record a pending call unless that step's round has one; a higher ``attempt`` opens a new round."""
        key = (pending.run_id, pending.step)
        prior = self._decisions.get(key)
        if prior is not None:
            if pending.attempt <= prior.attempt:
                return
            del self._decisions[key]  # a new round: the old approval no longer authorizes the step
            self._decided.pop(key, None)
        current = self._pending.get(key)
        if current is None or current.attempt < pending.attempt:
            self._pending[key] = pending

    async def decide(self, decision: Decision) -> Decision:
        """First decision on the open round wins; it is stamped with that round's attempt."""
        key = (decision.run_id, decision.step)
        if key in self._decisions:
            prior = self._decisions[key]
            raise AlreadyDecidedError(
                decision.run_id, decision.step, prior.outcome, prior.by, at=prior.at, reason=prior.reason
            )
        if key not in self._pending:
            raise NothingPendingError(f"run {decision.run_id!r} has no pending call at step {decision.step}")
        answered = self._decided[key] = self._pending.pop(key)
        decision = replace(decision, attempt=answered.attempt)
        # Judged by this process's clock, the store's: an embedded store is one machine.
        expired = answered.expires_at is not None and answered.expires_at <= time.time()
        if expired:
            decision = expiry(decision)
        self._decisions[key] = decision
        event = self._events.pop(key, None)
        if event is not None:
            event.set()
        if expired:
            raise AlreadyDecidedError(
                decision.run_id, decision.step, decision.outcome, decision.by, at=decision.at, reason=decision.reason
            )
        return decision

    async def decision(self, run_id: str, step: int) -> Decision | None:
        """The decision on the step, if any."""
        return self._decisions.get((run_id, step))

    async def decided_request(self, run_id: str, step: int) -> PendingApproval | None:
        """The request the step's decision answered, if it was decided."""
        return self._decided.get((run_id, step))

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
        for table in (self._pending, self._decisions, self._decided):
            for key in [k for k in table if k[0] == run_id]:
                del table[key]


