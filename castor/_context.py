"""The state of one run while its agent executes, reached by ``castor.lib`` through a context variable.

A ``RunContext`` hands out step positions in call order, keeps the journal contiguous when parallel
calls finish out of order, and is closed when the run ends, so a task the agent left behind cannot
keep calling tools through a finished run.
"""

from __future__ import annotations

import contextvars
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from castor._errors import JournalConflictError, RunEndedError
from castor.checkpoint import USAGE_STRIDE, AgentCheckpoint, SyscallRecord, usage_of

if TYPE_CHECKING:
    from castor.kernel import Castor


class Suspend(BaseException):
    """Unwinds the agent when a call must wait for a human.

    A ``BaseException`` so that an agent's ``except Exception`` cannot swallow it.
    """

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


@dataclass(eq=False)
class RunContext:
    """One run in progress."""

    kernel: Castor
    checkpoint: AgentCheckpoint
    speculative: bool = False
    scopes: tuple[str, ...] = ()
    next_step: int = 0
    closed: bool = False
    suspended_at: int | None = None
    preemption_context: dict[str, Any] | None = None
    children: dict[str, Any] = field(default_factory=dict)
    spawned: int = 0
    _ahead: dict[int, tuple[SyscallRecord, bool]] = field(default_factory=dict)
    usage: dict[str, float] = field(default_factory=dict)  # what the journal was charged so far
    ledger_open: bool = True  # the store holds a ledger for the run (closed when it stops)

    def __post_init__(self) -> None:
        self.usage = usage_of(self.checkpoint.syscall_log)
        self.run_id: str = self.checkpoint.pid
        # Looked up once: the syscall path reaches these on every step.
        self.journal = self.kernel.backend.journal
        self.budgets = self.kernel.backend.budgets

    def claim_step(self) -> int:
        """The next step position; taken synchronously so concurrent calls get call order."""
        if self.closed:
            raise RunEndedError(f"run {self.checkpoint.pid!r} has ended; tool() cannot be called after it")
        if self.suspended_at is not None:
            # A sibling suspended the run: nothing after it may run before the human decides.
            raise Suspend(self.suspended_at)
        step = self.next_step
        self.next_step = step + 1
        return step

    async def commit(self, step: int, record: SyscallRecord, *, stored: bool = False) -> SyscallRecord:
        """Journal ``record`` at ``step``: in the store, then in the checkpoint, in step order. Returns the
        step's record: ``record``, or the same call's record another process driving the run journaled
        first (write-once: the first record is the step's result for everyone).

        A record that arrives before an earlier step's is held until that step is journaled, so the
        journal never has holes; held records of a run that stops first are dropped (and refunded).
        ``stored`` says the executor journaled the record already (write-once, in the store).
        """
        log = self.checkpoint.syscall_log
        if step != len(log):
            self._ahead[step] = (record, stored)
            return record
        journal = self.journal
        usage = self.usage
        first, mine = step, record
        while True:
            charged = record.charged
            if charged:
                for name, amount in charged.items():
                    usage[name] = usage.get(name, 0.0) + amount
            if step % USAGE_STRIDE == USAGE_STRIDE - 1:
                record.__dict__["usage"] = dict(usage)  # set once, before anyone else holds the record
            if not stored:
                try:
                    await journal.append(self.run_id, step, record)
                except JournalConflictError:
                    adopted = await self._journaled_first(step, record)
                    for name, amount in (charged or {}).items():  # the usage is the standing record's
                        usage[name] -= amount
                    for name, amount in (adopted.charged or {}).items():
                        usage[name] = usage.get(name, 0.0) + amount
                    record = adopted
                if step == first:
                    mine = record
            log.append(record)
            step += 1
            held = self._ahead.pop(step, None)
            if held is None:
                return mine
            record, stored = held

    async def _journaled_first(self, step: int, record: SyscallRecord) -> SyscallRecord:
        """The step's record in the store, written first by another process driving the run, if it is the
        same call (it then stands for ``record``); else the conflict stands."""
        from castor.syscall import same_arguments

        stored = await self.journal.get(self.run_id, step)
        request = record.request
        if stored is None or stored.request.get("tool_name") != request.get("tool_name") or not same_arguments(
            stored.request.get("arguments"), request.get("arguments") or {}
        ):
            raise JournalConflictError(
                f"run {self.run_id!r} step {step} is journaled already with another call; records are write-once"
            )
        return stored

    def remaining(self, resource: str) -> float:
        """What the run may still spend on ``resource``, by what its journal was charged so far."""
        cap = self.checkpoint.capabilities.get(resource)
        if cap is None:
            return math.inf
        return max(cap.max_budget - self.usage.get(resource, 0.0), 0.0)

    def settle_usage(self) -> None:
        """Bring the checkpoint's capabilities up to what the journal was charged (when the run stops)."""
        for resource, cap in self.checkpoint.capabilities.items():
            cap.current_usage = self.usage.get(resource, 0.0)

    def proxy(self) -> Any:
        """The legacy syscall proxy handed to agents that take one parameter."""
        from castor.lib.proxy import SyscallProxy

        return SyscallProxy(self)

    def dropped_steps(self) -> list[int]:
        """Steps that finished after a hole that was never filled; the caller refunds them."""
        steps = sorted(self._ahead)
        self._ahead.clear()
        return steps


current_run: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar("castor_run", default=None)


def active_run() -> RunContext:
    """The run this code executes in; ``RunEndedError`` outside a run or after it ended."""
    ctx = current_run.get()
    if ctx is None:
        raise RunEndedError("castor.lib.tool() must be called inside Castor.run()")
    if ctx.closed:
        raise RunEndedError(f"run {ctx.checkpoint.pid!r} has ended; tool() cannot be called after it")
    return ctx
