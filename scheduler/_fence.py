"""Fencing: the writes a coordinator makes to a run are refused once it no longer holds the run's lease.

The coordinator's kernels talk to the store through ``fenced(backend, fences)``. A journal record, a
budget charge and a run-header save hand their Redis script a ``Fence`` (the run's lease key and this
coordinator's token) and the script refuses the write inside Redis when the token differs, so nothing
can slip between the check and the write. Every live call is charged before it is dispatched, a call
that costs nothing included (for a fenced run the charge script runs to check the fence), so a stale
coordinator cannot dispatch a tool either. The rare writes (ledger open, refund and close, failure
record, fork) check the lease just before they write. Either way a stale coordinator gets
``StaleLeaseError``: one that was paused past its lease and woke up cannot write over the coordinator
that took the run over. A child run (``<pid>::<name>-<n>``) is fenced by its root run's lease.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from castor.backends.redis import Fence, keys
from castor.checkpoint import AgentCheckpoint, StepFailure, SyscallRecord
from castor.errors import StaleLeaseError
from castor.seams import Backend, Charge

# (leased pid, token) of the drive the current task belongs to; None outside a drive.
_DRIVE: ContextVar[tuple[str, str] | None] = ContextVar("castor_drive", default=None)


class Fences:
    """The leases this coordinator holds (pid -> the newest token, which the heartbeat renews) and the
    token each drive writes with, checked against Redis before a write."""

    def __init__(self, redis: Any, prefix: str, owner: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.owner = owner
        self.tokens: dict[str, str] = {}

    @staticmethod
    def bind(pid: str, token: str) -> None:
        """Make the calling task (and the tasks it starts) a drive of ``pid`` under ``token``: its writes
        carry that token, whatever token this process holds for the run later."""
        _DRIVE.set((pid, token))

    def holder_of(self, pid: str) -> tuple[str, str]:
        """``(leased pid, token)`` that covers ``pid``: the calling drive's own token, else (outside a drive)
        the one this process holds; ``StaleLeaseError`` if there is none."""
        drive = _DRIVE.get()
        run = pid
        while run:
            token = self.tokens.get(run) if drive is None else (drive[1] if drive[0] == run else None)
            if token is not None:
                return run, token
            run = run.rpartition("::")[0]
        raise StaleLeaseError(f"this coordinator holds no lease on run {pid!r}; it may not write to it")

    def fence(self, pid: str) -> Fence:
        """The fence a Redis script checks itself: the covering run's lease key and this token."""
        run, token = self.holder_of(pid)
        return Fence(keys.lease(self.prefix, run), token)

    async def check(self, pid: str) -> None:
        """Raise ``StaleLeaseError`` unless the run's lease still holds this coordinator's token."""
        run, token = self.holder_of(pid)
        holder = await self.redis.get(keys.lease(self.prefix, run))
        if holder != token:
            if self.tokens.get(run) == token:  # never drop a newer lease of the run this process holds
                self.tokens.pop(run, None)
            raise StaleLeaseError(
                f"run {run!r}: this drive's lease is gone (now held by {holder or 'nobody'}); "
                "another drive has the run"
            )


class _Fenced:
    def __init__(self, inner: Any, fences: Fences) -> None:
        self._inner = inner
        self._fences = fences

    def __getattr__(self, name: str) -> Any:  # reads pass straight through
        return getattr(self._inner, name)


class FencedJournal(_Fenced):
    """A journal whose writes check the lease."""

    async def append(self, run_id: str, step: int, record: SyscallRecord) -> None:
        """Write the record if this coordinator still holds the run (checked inside the script)."""
        await self._inner.append(run_id, step, record, fence=self._fences.fence(run_id))

    async def record_failure(self, run_id: str, failure: StepFailure) -> None:
        """Journal the failure if this coordinator still holds the run."""
        await self._fences.check(run_id)
        await self._inner.record_failure(run_id, failure)

    async def fork(self, parent_id: str, child_id: str, at_step: int) -> None:
        """Share a prefix into a run this coordinator holds."""
        await self._fences.check(child_id)
        await self._inner.fork(parent_id, child_id, at_step)


class FencedBudgets(_Fenced):
    """A budget store whose per-run writes check the lease (scopes are shared and not fenced)."""

    async def open_run(self, run_id: str, limits: Mapping[str, float], used: Mapping[str, float]) -> None:
        """Open the ledger of a run this coordinator holds."""
        await self._fences.check(run_id)
        await self._inner.open_run(run_id, limits, used)

    async def charge(self, run_id: str, step: int, cost: Mapping[str, float], scopes: Sequence[str] = ()) -> Charge:
        """Charge only while this coordinator holds the run: a stale one can dispatch nothing (the
        fence is checked even for a call that costs nothing)."""
        return await self._inner.charge(
            run_id, step, cost, scopes, fence=self._fences.fence(run_id)
        )

    async def refund(self, run_id: str, step: int) -> None:
        """Refund a step of a run this coordinator holds."""
        await self._fences.check(run_id)
        await self._inner.refund(run_id, step)

    async def settle(
        self, run_id: str, step: int, actual: Mapping[str, float], scopes: Sequence[str] = ()
    ) -> None:
        """Settle a model call's reservation of a run this coordinator holds (``castor.seams.Settling``)."""
        await self._fences.check(run_id)
        await self._inner.settle(run_id, step, actual, scopes)

    async def close_run(self, run_id: str) -> None:
        """Drop the ledger of a run this coordinator holds (never the ledger its new owner opened)."""
        await self._fences.check(run_id)
        await self._inner.close_run(run_id)


class FencedRuns(_Fenced):
    """A run store whose saves check the lease."""

    async def save(self, checkpoint: AgentCheckpoint, *, reopen: str | None = None) -> None:
        """Store the header if this coordinator still holds the run (checked inside the save script);
        a running run names its owner. A finished run keeps its end (``RunStore.save``)."""
        owner = self._fences.owner if checkpoint.status == "RUNNING" else None
        fence = self._fences.fence(checkpoint.pid)
        await self._inner.save(checkpoint, owner=owner, fence=fence, reopen=reopen)

    async def create(self, checkpoint: AgentCheckpoint) -> None:
        """Create a run this coordinator holds (``RunStore.create``)."""
        await self._fences.check(checkpoint.pid)
        await self._inner.create(checkpoint)


def fenced(backend: Backend, fences: Fences) -> Backend:
    """The backend as a coordinator's kernels see it: the same store (what it says of itself, such as
    ``answers_inline``, kept), every run write fenced."""
    return dataclasses.replace(
        backend,
        journal=FencedJournal(backend.journal, fences),
        budgets=FencedBudgets(backend.budgets, fences),
        runs=FencedRuns(backend.runs, fences),
        leased=True,
    )
