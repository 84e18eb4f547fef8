"""The state of one run while its agent executes, reached by ``castor.lib`` through a context variable.

A ``RunContext`` hands out step positions in call order, keeps the journal contiguous when parallel
calls finish out of order, and is closed when the run ends, so a task the agent left behind cannot
keep calling tools through a finished run. It reaches the kernel only through ``Services``: the tools,
the store, the executor, the agents and the syscall handler chain, never the whole ``Castor``.

This module is the bottom of the kernel: ``castor.lib`` and every other kernel module import it, and
it imports none of them.
"""

from __future__ import annotations

import contextvars
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from castor._canonical import canonical
from castor._sealing import DataKey, digested
from castor.agents import AgentRegistry
from castor.checkpoint import USAGE_STRIDE, AgentCheckpoint, SyscallRecord, failure_usage, usage_after, usage_of
from castor.errors import (
    RUNS_ON,
    BackendUnavailable,
    JournalConflictError,
    OutcomeUnknownError,
    RunEndedError,
)
from castor.kernel.failed_steps import NOT_OUTCOMES, failure_record
from castor.registry import ToolRegistry, ToolSpec
from castor.seams import Backend, Executor, ToolCall

log = logging.getLogger("castor.run")


class Suspend(BaseException):
    """Unwinds the agent when a call must wait for a human.

    A ``BaseException`` so that an agent's ``except Exception`` cannot swallow it.
    """

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


class RunEnding(BaseException):
    """A run-ending Castor error (``error``: a replay divergence, a refused model call, ...) carried past a
    framework's ``except Exception``, which would hand it to the model as a tool's result; the runner ends
    the run with ``error`` itself (``castor.frameworks``)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def outcome_unknown(exc: BaseException) -> bool:
    """Whether ``exc`` stops a call that may have acted unrecorded (``OutcomeUnknownError``, carried in a
    ``RunEnding`` or not; a cancellation marked ``RUNS_ON``): its charge stands, and its claim stays for
    whoever reaches the step next."""
    if isinstance(exc, RunEnding):
        exc = exc.error
    return isinstance(exc, OutcomeUnknownError) or getattr(exc, RUNS_ON, False) is True


def unrecorded(call: ToolCall, exc: BackendUnavailable) -> RunEnding:
    """What stops the run of a call that acted (a tool ran, a model answered) when its record cannot be
    journaled (``exc``): an ``OutcomeUnknownError``, carried past the agent's own error handling."""
    return RunEnding(OutcomeUnknownError(
        f"{call.tool_name!r} (run {call.run_id}, step {call.step}) ran, and its record cannot be journaled: "
        f"{exc}; the run stopped (resume it once the store is back: the step is in doubt, or run again if "
        "its tool is neither destructive nor claimed)"
    ))


@dataclass(slots=True, init=False)
class Syscall(ToolCall):
    """One tool call on its way through the kernel's handler chain: the ``ToolCall`` the executor is
    handed and the journal records, plus the run it belongs to and the tool's spec (set by validation)."""

    ctx: RunContext
    spec: ToolSpec | None

    def __init__(self, run_id: str, step: int, tool_name: str, arguments: dict[str, Any], ctx: RunContext) -> None:
        # Written out: one is made per step, replayed ones too, and a generated __init__ fills the
        # keyword-only defaults from a dict, one lookup each (a third of a replayed step's budget).
        self.run_id = run_id
        self.step = step
        self.tool_name = tool_name
        self.arguments = arguments
        self.ctx = ctx
        self.spec = None
        self.attempt = 0
        self.checked = None
        self.decided_by = None
        self.was_hitl = False
        self.needs_review = False
        self.review_reason = None
        self.charged = None
        self.usage = None
        self.finished_at = None

    def journaled_arguments(self) -> dict[str, Any]:
        """The raw arguments with their sensitive values as keyed digests, as the journal keeps them."""
        spec = self.spec
        if spec is not None and not spec.sensitive:
            return self.arguments  # every live step asks: the common answer without stored_arguments' call
        return self.stored_arguments(digested)

    def stored_arguments(self, seal: Callable[[dict[str, Any], frozenset[str], DataKey], dict[str, Any]]) -> Any:
        """The raw arguments with their sensitive values sealed by ``seal`` (``castor._sealing``)."""
        services = self.ctx.services
        spec = self.spec or services.tools.find(self.tool_name)
        if spec is None or not spec.sensitive:
            return self.arguments
        return seal(self.arguments, spec.sensitive, services.data_key)


Handler = Callable[[Syscall], Awaitable[Any]]
"""The syscall handler chain as a whole, or what one interceptor passes a call on to."""


class Interceptor(Protocol):
    """A declared stage of the syscall handler chain: ``Castor(interceptors=[...])``.

    ``interceptor(call, inner)`` either answers the call itself or returns ``inner(call)``. Interceptors
    run in the order given, after replay (a step served from the journal never reaches them) and before
    validation, budget and execution: every live call passes each one. An interceptor that only passes
    a call on should return ``inner(call)`` without awaiting it (a plain function, not a coroutine),
    so it costs a function call on the hot path. One with a true ``sees_replay`` attribute runs before
    replay instead and sees replayed steps too (``castor.metrics`` counts them).
    """

    def __call__(self, call: Syscall, inner: Handler) -> Awaitable[Any]:
        """Answer ``call`` or pass it to ``inner``."""
        ...


class ChildOperation(Protocol):
    """``spawn`` or ``join`` of a child agent, run against the parent's context (``castor.kernel.children``)."""

    def __call__(self, ctx: RunContext, *args: Any) -> Awaitable[Any]:
        """Do the operation at the parent's next step."""
        ...


class DriveHold(Protocol):
    """This process's hold on a run's drive (``castor.kernel.claims.Drive``): a drive whose process stalled
    past its lease, the run taken over meanwhile by another process, must run and write nothing more."""

    lost: bool
    sure_until: float  # time.monotonic() until which no other process can have taken the run over

    async def check(self) -> None:
        """``confirm`` unless the last renewal is recent enough that no one can have taken the run over."""
        ...

    async def confirm(self) -> None:
        """Renew the hold; ``StaleLeaseError`` if another process holds the run's drive now."""
        ...


@dataclass(frozen=True, slots=True, eq=False)
class Services:
    """What a run may use of its kernel: built once by ``Castor``, shared by all its runs."""

    tools: ToolRegistry
    backend: Backend
    executor: Executor
    agents: AgentRegistry
    chain: Handler  # the syscall handler chain: replay → interceptors → validate → gate → budget → execute
    data_key: DataKey  # seals sensitive arguments in the journal and in pending calls
    spawn: ChildOperation
    join: ChildOperation
    structured_results: bool = False
    # Model calls (castor.kernel.model.ModelServices): the provider, the price table, the model chain.
    models: Any = None
    # The context-window MMU (castor.mmu.MMU), or None: castor.lib.tool and model calls consult it.
    mmu: Any = None
    # Checkpoints the kernel drove, while someone still holds them (a weak mapping: the store has the rest).
    live: MutableMapping[str, AgentCheckpoint] = field(default_factory=dict)


@dataclass(eq=False)
class RunContext:
    """One run in progress."""

    services: Services
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
    # Steps whose call raised, as failure records: journaled once the run goes past them (went_past).
    unjournaled_failures: dict[int, SyscallRecord] = field(default_factory=dict)
    failure_errors: dict[int, BaseException] = field(default_factory=dict)  # what each of those raised
    usage: dict[str, float] = field(default_factory=dict)  # what the journal was charged so far
    spent: dict[str, float] = field(default_factory=dict)  # what calls that failed part way were charged
    ledger_open: bool = True  # the store holds a ledger for the run (closed when it stops)
    # Steps whose record a drive before this one kept (``AgentCheckpoint.held``), not journaled yet: served
    # by replay (castor.kernel.steps), journaled once the steps before them are; their charges are in ``spent``.
    held_steps: set[int] = field(default_factory=set)
    # What framework guards keep for this run only (castor.frameworks._conversations: each conversation's
    # converted parts), by owner: gone with the run, however many runs a process drives at once.
    frameworks: dict[Any, Any] = field(default_factory=dict)
    # The drive claim this process holds on the run (``castor.kernel.claims.driving``), checked before each
    # call runs; None where a run is driven otherwise (a fleet coordinator's lease fences its writes).
    drive: DriveHold | None = None

    def __post_init__(self) -> None:
        self.usage = usage_of(self.checkpoint.syscall_log)
        self.spent = failure_usage(self.checkpoint.failures)
        if self.checkpoint.held:
            self._take_held()
        self.run_id: str = self.checkpoint.pid
        # Looked up once: the syscall path reaches these on every step.
        backend = self.services.backend
        self.journal = backend.journal
        self.budgets = backend.budgets
        # Whether a call that no budget limits is charged anyway (a store that checks a fenced run's lease
        # on every charge); else such a call costs no charge at all (castor.kernel.chain.budget).
        self.charges_free_calls: bool = getattr(self.budgets, "empty_charges_checked", True)
        # Whether every non-idempotent call is claimed before it runs (castor.kernel.chain.gate): a leased
        # store, or one asked for at most once, whose executor does not journal itself. Fixed for the
        # kernel; read by the gate on every step.
        if backend.at_most_once:
            self.checkpoint.at_most_once = True  # the run keeps it, wherever it is driven next
        claims = backend.leased or self.checkpoint.at_most_once
        self.claims_calls: bool = claims and not self.services.executor.writes_journal

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
        journal never has holes; held records of a run that stops first are kept with it (``keep_held``).
        ``stored`` says the executor journaled the record already (write-once, in the store).
        """
        log = self.checkpoint.syscall_log
        if step != len(log):
            return await self._hold(step, record, stored)
        if not self._ahead and step % USAGE_STRIDE != USAGE_STRIDE - 1:
            # The usual step: next in order, nothing held behind it, no usage snapshot to add.
            charged = record.charged
            if not stored:
                try:
                    await self.journal.append(self.run_id, step, record)
                except JournalConflictError:
                    return await self._drain(step, record, stored)
            if charged:  # _count, inlined: with nothing held, no step here is a kept one
                usage = self.usage
                for name, amount in charged.items():
                    usage[name] = usage.get(name, 0.0) + amount
            log.append(record)
            ahead = self._ahead
            if ahead and step + 1 in ahead:  # the next step's record arrived while the store wrote this one
                await self._drain(step + 1, *ahead.pop(step + 1))
            return record
        return await self._drain(step, record, stored)

    async def _drain(self, step: int, record: SyscallRecord, stored: bool) -> SyscallRecord:
        """``commit`` of ``record`` at ``step`` (the next in order), then of the records held behind it."""
        log = self.checkpoint.syscall_log
        journal = self.journal
        first, mine = step, record
        while True:
            charged = record.charged
            if not stored:  # a stored record is kept as journaled: it has its snapshot if its builder knew it
                if step % USAGE_STRIDE == USAGE_STRIDE - 1:
                    # Set once, before anyone else holds the record.
                    record.__dict__["usage"] = usage_after(self.usage, charged)
                try:
                    await journal.append(self.run_id, step, record)
                except JournalConflictError:
                    record = await self._journaled_first(step, record)  # the usage is the standing record's
                except BaseException:
                    if step != first:  # a record drained from behind: still held (kept if the run stops)
                        self._ahead[step] = (record, stored)
                    raise
                if step == first:
                    mine = record
            self._count(step, record.charged, charged)
            log.append(record)
            step += 1
            held = self._ahead.pop(step, None)
            if held is None:
                return mine
            record, stored = held

    def _count(self, step: int, charged: Mapping[str, float] | None, kept: Mapping[str, float] | None) -> None:
        """Add ``charged``, the charge of the record journaled at ``step``, to the run's usage. A record a
        drive before kept was counted as spent (``_kept``): its own charge, ``kept``, leaves ``spent``."""
        if charged:
            usage = self.usage
            for name, amount in charged.items():
                usage[name] = usage.get(name, 0.0) + amount
        if step in self.held_steps:
            self.held_steps.discard(step)
            for name, amount in (kept or {}).items():
                self.spent[name] -= amount

    async def _hold(self, step: int, record: SyscallRecord, stored: bool) -> SyscallRecord:
        """A record that arrives before an earlier step's: held until that step is journaled, unless that
        step failed (the run goes past it: both journaled now). The step's record, as ``commit``."""
        self._ahead[step] = (record, stored)
        if self.unjournaled_failures:
            await self.went_past(step)
        log = self.checkpoint.syscall_log
        return log[step] if step < len(log) else record  # journaled now (maybe another's), or held

    async def step_failed(self, call: Syscall, error: BaseException) -> None:
        """``call`` raised ``error`` and its step has no record: kept as a failure record, journaled if the
        run goes past the step (``castor.kernel.failed_steps``). A run-ending error is no step's outcome.

        A call the agent left running when its run stopped (``asyncio.gather`` gives up at the first
        suspension) is journaled at once if the run suspended past it, as ``journal_failures_passed`` would
        have at the stop: else a resume would make the call again."""
        step = call.step
        if step < len(self.checkpoint.syscall_log) or step in self._ahead or isinstance(error, NOT_OUTCOMES):
            return
        self.unjournaled_failures[step] = failure_record(call.request, error, time.time())
        self.failure_errors[step] = error
        if self.closed:
            try:
                await self.journal_failures_passed()
            except Exception:  # the store refused: the call's own error is what its (abandoned) task raises
                log.warning("run %s: the failure of step %d, left running when the run stopped, was not "
                            "journaled; a resume makes the call again", self.run_id, step, exc_info=True)

    async def went_past(self, step: int) -> None:
        """The run goes on at ``step``: the failure records of the steps before it are journaled, and with
        them the records held behind them (``commit``)."""
        failed = [s for s in self.unjournaled_failures if s < step]
        if not failed:
            return
        for s in failed:
            self._ahead[s] = (self.unjournaled_failures.pop(s), False)
            self.failure_errors.pop(s, None)  # an error holds its traceback's frames
        log = self.checkpoint.syscall_log
        first = len(log)
        held = self._ahead.pop(first, None)
        if held is None:
            return
        try:
            await self.commit(first, held[0], stored=held[1])
        except BaseException:
            # The store refused a write: the failure records not journaled wait for the run's next call,
            # which journals them first (the one the store refused included, if it was one).
            if len(log) == first and held[0].failure is not None:
                self.unjournaled_failures[first] = held[0]
            for s in [s for s, (record, stored) in self._ahead.items() if record.failure is not None and not stored]:
                self.unjournaled_failures[s] = self._ahead.pop(s)[0]
            raise

    async def journal_failures_passed(self, *, completed: bool = False, ended_by: BaseException | None = None) -> None:
        """The run stops: a failed step that the run went past is journaled, with the records held behind it.
        The run went past a step when a later one finished (calls at once), when it suspends at a later
        one (a call beside it waits for a human), when the agent returned (``completed``: it caught every
        error its calls raised), or when the agent failed (``ended_by``) with an error that is not the
        step's and was not raised while handling it: it had caught the step's. A failure the run stopped at
        is not journaled: a resume runs it again, which is how a failed run is retried."""
        if not self.unjournaled_failures:
            return
        past = max(self._ahead) + 1 if self._ahead else 0
        if self.suspended_at is not None:
            past = max(past, self.suspended_at)
        if completed:  # else a fork or replay of the finished run would make its last, failed, call again
            past = max(past, max(self.unjournaled_failures) + 1)
        elif ended_by is not None:
            causes = _chain(ended_by)
            stopped_at = [s for s in self.unjournaled_failures if any(self.failure_errors.get(s) is c for c in causes)]
            gone_past = [s for s in self.unjournaled_failures if s not in stopped_at]
            if gone_past:  # never as far as a step the run stopped at: that one a resume retries
                past = max(past, min([max(gone_past) + 1, *stopped_at]))
        if past:
            await self.went_past(past)

    async def _journaled_first(self, step: int, record: SyscallRecord) -> SyscallRecord:
        """The step's record in the store, written first by another process driving the run, if it is the
        same call (it then stands for ``record``); else the conflict stands."""
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
        return max(cap.max_budget - self.usage.get(resource, 0.0) - self.spent.get(resource, 0.0), 0.0)

    def total_usage(self) -> dict[str, float]:
        """What the run was charged: its journal, and the calls that failed part way (``spent``)."""
        if not self.spent:
            return self.usage
        total = dict(self.usage)
        for name, amount in self.spent.items():
            total[name] = total.get(name, 0.0) + amount
        return total

    def update_capabilities(self) -> None:
        """Bring the checkpoint's capabilities up to what the run was charged (when the run stops)."""
        used = self.total_usage()
        for resource, cap in self.checkpoint.capabilities.items():
            cap.current_usage = used.get(resource, 0.0)

    def spawn(self, agent: str, capabilities: Mapping[str, float] | None) -> Awaitable[Any]:
        """Start child agent ``agent`` at this run's next step (``castor.kernel.children.spawn``)."""
        return self.services.spawn(self, agent, capabilities)

    def join(self, handle: str) -> Awaitable[Any]:
        """Wait for a child agent at this run's next step (``castor.kernel.children.join``)."""
        return self.services.join(self, handle)

    def keep_held(self) -> dict[int, SyscallRecord]:
        """The records still held behind a step with none (the run stops at it, or left it running): kept in
        the checkpoint (``AgentCheckpoint.held``) for the next drive, their charges counted as spent. A late
        record of the step before them still journals them (``commit``)."""
        for step, (record, _) in self._ahead.items():
            if step not in self.held_steps:
                self._kept(step, record)
        return {step: record for step, (record, _) in sorted(self._ahead.items())}

    def held_record(self, step: int) -> SyscallRecord:
        """The kept record of ``step`` (one of ``held_steps``)."""
        return self._ahead[step][0]

    async def journal_kept(self) -> None:
        """Journal the kept records the journal has reached (the steps before them were journaled since they
        were kept: by a decision, or a drive that failed to write them). A write that fails keeps them."""
        first = len(self.checkpoint.syscall_log)
        held = self._ahead.pop(first, None) if first in self.held_steps else None
        if held is None:
            return
        try:
            await self._drain(first, *held)
        except BaseException:
            if len(self.checkpoint.syscall_log) == first:
                self._ahead[first] = held
            raise

    def _take_held(self) -> None:
        """Hold the records a drive before this one kept, for the steps the journal has not reached."""
        journaled = len(self.checkpoint.syscall_log)
        for step, record in self.checkpoint.held.items():
            if step >= journaled and step not in self._ahead:
                self._ahead[step] = (record, False)
                self._kept(step, record)

    def _kept(self, step: int, record: SyscallRecord) -> None:
        """``step``'s record is kept for a later drive: its charge counts as spent until it is journaled
        (``_count`` moves it into usage then)."""
        self.held_steps.add(step)
        for name, amount in (record.charged or {}).items():
            self.spent[name] = self.spent.get(name, 0.0) + amount


async def confirmed(drive: DriveHold, inner: Handler, call: Syscall) -> Any:
    """``inner(call)`` once ``drive`` is confirmed (``StaleLeaseError`` if the run was taken over)."""
    await drive.confirm()
    return await inner(call)


def same_arguments(recorded: Any, actual: dict[str, Any]) -> bool:
    """Equal as canonical JSON: a list recorded for a tuple, or another key order, still matches."""
    if recorded == actual:
        return True
    return bool(canonical(recorded) == canonical(actual))


current_run: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar("castor_run", default=None)


def active_run() -> RunContext:
    """The run this code executes in; ``RunEndedError`` outside a run or after it ended."""
    ctx = current_run.get()
    if ctx is None:
        raise RunEndedError("castor.lib.tool() must be called inside Castor.run()")
    if ctx.closed:
        raise RunEndedError(f"run {ctx.checkpoint.pid!r} has ended; tool() cannot be called after it")
    return ctx


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and what it was raised from or while handling (``__cause__``, ``__context__``)."""
    seen: list[BaseException] = []
    todo = [error]
    while todo:
        current = todo.pop()
        if any(current is known for known in seen):
            continue
        seen.append(current)
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
    return seen
