"""Driving one run: build or resume its checkpoint, run the agent in a ``RunContext``, set its final
status, persist it. Every way a run stops (return, exception, suspension, preemption) goes through
``drive``, so each is persisted the same way (``finish``).

The runner works on the kernel's ``Services``, not on ``Castor``: a coordinator drives a leased run with
``prepare(kernel.services, agent, checkpoint=cp)`` and ``drive``. It builds the legacy ``SyscallProxy``
for an agent that takes one parameter.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from types import FunctionType
from typing import Any

from castor import _terminal
from castor._ids import check_pid, pid_part
from castor._terminal import save_run, save_started, stored_run
from castor.checkpoint import FINISHED, AgentCheckpoint, Capability
from castor.errors import ConfigError, JournalConflictError, OutcomeUnknownError, RemoteToolError, RunNotFoundError
from castor.kernel.claims import driving
from castor.kernel.context import RunContext, RunEnding, Services, Suspend, current_run
from castor.kernel.failed_steps import failure_record
from castor.lib.proxy import SyscallProxy

log = logging.getLogger("castor.run")


def agent_name(agent: Callable[..., Any]) -> str:
    """The name runs of ``agent`` are known by (pids start with it)."""
    return str(getattr(agent, "__name__", None) or type(agent).__name__)


def new_pid(agent: Callable[..., Any]) -> str:
    """``<agent function name>-<8 hex chars>`` (a ``<lambda>`` as ``_lambda_``: see ``check_pid``)."""
    return f"{pid_part(agent_name(agent))}-{uuid.uuid4().hex[:8]}"


def new_checkpoint(pid: str, name: str, budgets: Mapping[str, float]) -> AgentCheckpoint:
    """A fresh ``RUNNING`` checkpoint with one capability per budget; ``InvalidPidError`` for a pid that
    breaks ``castor._ids.check_pid``'s rule."""
    check_pid(pid)
    caps = {r: Capability(resource_type=r, max_budget=float(v)) for r, v in budgets.items()}
    return AgentCheckpoint(pid=pid, status="RUNNING", agent_function_name=name, capabilities=caps)


async def load(services: Services, pid: str) -> AgentCheckpoint:
    """The checkpoint of ``pid`` with its journal, read from the store (``RunNotFoundError`` if none)."""
    header = await stored_run(services.backend, pid)
    if header is None:
        raise RunNotFoundError(pid)
    return header


async def prepare(
    services: Services,
    agent: Callable[..., Any],
    *,
    checkpoint: AgentCheckpoint | None = None,
    pid: str | None = None,
    budgets: Mapping[str, float] | None = None,
    speculative: bool | None = None,
    scopes: Iterable[str] | None = None,
    default_budgets: Mapping[str, float] | None = None,
    default_scopes: Iterable[str] = (),
) -> RunContext:
    """The run's context, its checkpoint ready to (re)start and its state in the backend. A new run gets
    ``budgets`` (else ``default_budgets``) and ``scopes`` (else ``default_scopes``); a resumed one keeps
    its own, ``budgets`` topping them up."""
    backend = services.backend
    await backend.ready()  # once: a store that cannot keep Castor's promises (a Redis that evicts) is refused
    if checkpoint is None and pid is not None and await backend.runs.load(pid) is not None:
        checkpoint = await load(services, pid)  # a stored run of that pid resumes
    fresh = checkpoint is None and pid is None  # a pid made up here: nothing in the store can hold it yet
    stored = checkpoint is not None  # read earlier, maybe by another process: the store may be ahead of it
    if checkpoint is None:
        limits = (default_budgets or {}) if budgets is None else budgets
        checkpoint = new_checkpoint(new_pid(agent) if pid is None else pid, agent_name(agent), limits)
        checkpoint.speculative = bool(speculative)
        checkpoint.scopes = list(default_scopes if scopes is None else scopes)
    else:
        _check_runs_as(checkpoint, pid)
        for resource, limit in (budgets or {}).items():
            cap = checkpoint.capabilities.get(resource)
            if cap is None:
                checkpoint.capabilities[resource] = Capability(resource_type=resource, max_budget=float(limit))
            else:
                cap.max_budget = float(limit)
        if speculative is not None:
            checkpoint.speculative = speculative
        if scopes is not None:
            checkpoint.scopes = list(scopes)
    cp = checkpoint
    _restart_conversation(services, cp)
    cp.scopes = list(dict.fromkeys(cp.scopes))  # a scope named twice is drawn from once
    await sync_journal(services, cp, catch_up=stored)  # before the context reads what the journal charged
    ctx = RunContext(services, cp, speculative=cp.speculative, scopes=tuple(cp.scopes))
    await ctx.journal_kept()
    if await _cancelled_since_read(ctx, stored):
        return ctx
    _keep_preemption(ctx)
    loaded = cp.status
    cp.status = "RUNNING"
    cp.pending_hitl = None
    cp.pending_step = None
    cp.pending_reason = None
    cp.error = None
    cp.updated_at = time.time()
    limits = {r: c.max_budget for r, c in cp.capabilities.items()}
    # A fresh run without limits or scopes is never charged (the budget stage skips costs no ledger
    # tracks) and has no old ledger to replace: its ledger needs neither opening nor closing.
    ctx.ledger_open = bool(limits or ctx.scopes or not fresh)
    if ctx.ledger_open:
        await backend.budgets.open_run(cp.pid, limits, ctx.total_usage())
    if not await save_started(backend, cp, loaded):  # finished by another process: nothing to drive
        ctx.closed = True
        if ctx.ledger_open:
            await backend.budgets.close_run(cp.pid)
    services.live[cp.pid] = cp
    log.info("run %s %s (%d journaled steps)", cp.pid, "resumes" if cp.syscall_log else "starts", len(cp.syscall_log))
    return ctx


def _keep_preemption(ctx: RunContext) -> None:
    """A resumed preempted run's reason, payload and partial work move to ``ctx.preemption_context``. 0.5.1
    code sets a preempted checkpoint's status back to RUNNING before resuming it: its reason stays."""
    cp = ctx.checkpoint
    if cp.status == "PREEMPTED" or cp.preemption_reason is not None:
        ctx.preemption_context = {
            "reason": cp.preemption_reason, "payload": cp.preemption_payload, "partial_work": cp.partial_work,
        }
        cp.preemption_reason = cp.preemption_payload = cp.partial_work = None


async def _cancelled_since_read(ctx: RunContext, stored: bool) -> bool:
    """Whether an operator cancelled the run since its checkpoint was read (``stored``: it was read from
    the store, maybe before): then the checkpoint becomes the stored run and the context is closed, not
    driven (``castor._terminal``)."""
    cp, services = ctx.checkpoint, ctx.services
    if not stored or not await _terminal.cancelled_meanwhile(services.backend, cp):
        return False
    log.info("run %s was cancelled since it was read: not driven", cp.pid)
    await _terminal.take_stored(services.backend, cp)
    ctx.closed = True
    services.live[cp.pid] = cp
    return True


def _restart_conversation(services: Services, cp: AgentCheckpoint) -> None:
    """With an MMU, the run's conversation restarts from where the run started: replay rebuilds it."""
    if services.mmu is not None:
        services.mmu.start(cp)


async def sync_journal(services: Services, cp: AgentCheckpoint, *, catch_up: bool = False) -> None:
    """Make the store's journal hold every record of ``cp`` (a checkpoint may come from JSON); with
    ``catch_up``, also make ``cp`` hold the records only the store has (another process drove the run on
    since ``cp`` was read: those steps are served from the journal, never run again)."""
    log = cp.syscall_log
    if not log and not catch_up:
        return  # nothing to hold (a fresh run): no round trip
    journal = services.backend.journal
    have = await take_stored(journal, cp)
    if catch_up and await fill_failed_steps(journal, cp):
        return
    if have >= len(log):
        return
    is_fork = have == 0 and cp.parent_pid and cp.pid == f"{cp.parent_pid}::fork-{len(log)}"
    if is_fork and await journal.length(str(cp.parent_pid)) >= len(log):
        await journal.fork(str(cp.parent_pid), cp.pid, len(log))  # share the prefix, copy nothing
        return
    for step in range(have, len(log)):
        try:
            await journal.append(cp.pid, step, log[step])
        except JournalConflictError:
            stored = await journal.get(cp.pid, step)
            if stored is None or stored.request != log[step].request:
                raise JournalConflictError(
                    f"run {cp.pid!r} step {step}: the store holds another call than the checkpoint; "
                    "the checkpoint is stale (load the run from the store instead)"
                ) from None


async def take_stored(journal: Any, cp: AgentCheckpoint) -> int:
    """``cp`` takes the records the store holds after its own, up to the store's contiguous length (which is
    returned)."""
    log = cp.syscall_log
    have = int(await journal.length(cp.pid))
    for step in range(len(log), have):
        record = await journal.get(cp.pid, step)
        if record is None:
            break
        log.append(record)
    return have


async def fill_failed_steps(journal: Any, cp: AgentCheckpoint) -> bool:
    """Journal the failed steps a lost process never journaled, where the store holds a later step (a
    worker journals its calls itself): the failure the store recorded for the step fills it, as the error
    the agent saw then (a worker's ``RemoteToolError``), and ``cp`` takes the records after it. Whether any
    was filled (``castor.kernel.failed_steps``)."""
    log = cp.syscall_log
    filled = False
    while await journal.get(cp.pid, len(log) + 1) is not None:  # a later step stands beyond a hole
        step = len(log)
        failure = next((f for f in reversed(await journal.failures(cp.pid)) if f.step == step), None)
        if failure is None:
            break
        request = {"tool_name": failure.tool_name, "arguments": failure.arguments}
        error = RemoteToolError(failure.error_type, failure.message, tool_name=failure.tool_name)
        with contextlib.suppress(JournalConflictError):  # another process filled it first: its record stands
            await journal.append(cp.pid, step, failure_record(request, error, failure.at))
        await take_stored(journal, cp)  # the filled step (this one's or another's), then those after it
        if len(log) == step:
            break
        filled = True
    return filled


async def drive(ctx: RunContext, agent: Callable[..., Any], preempted: list[Any] | None = None) -> AgentCheckpoint:
    """Run the agent to its next stop and persist where it stopped."""
    cp = ctx.checkpoint
    if ctx.closed:  # prepare found the run finished, or cancelled, by another process (castor._terminal)
        return cp
    token = current_run.set(ctx)
    error: BaseException | None = None
    failed_by: Exception | None = None  # the agent's own error (not a run-ending one carried through it)
    try:
        result = agent(SyscallProxy(ctx)) if takes_proxy(agent) else agent()
        if inspect.isawaitable(result):
            result = await result
    except Suspend:
        cp.status = "SUSPENDED_FOR_HITL"
    except asyncio.CancelledError as exc:
        cp.status = "PREEMPTED"
        reason, payload = preempted if preempted else ("cancelled", None)
        cp.preemption_reason, cp.preemption_payload = reason, payload
        if not preempted:
            error = exc
    except (RunEnding, Exception) as exc:  # RunEnding: carried past a framework's except Exception
        error, failed_by = _ended(cp, exc)
    except BaseException as exc:  # KeyboardInterrupt, SystemExit: stop, resumable later
        cp.status = "PREEMPTED"
        cp.preemption_reason = type(exc).__name__
        error = exc
    else:
        cp.status = "COMPLETED"
        cp.result = result
    finally:
        ctx.closed = True
        current_run.reset(token)
    if ctx.drive is not None:
        # Another process that took the run over while this one stalled writes its end; this one, nothing.
        await ctx.drive.check()
    await finish(ctx, failed_by)
    if error is not None:
        raise error
    return cp


STORE_AWAY = "store unavailable"
"""The preemption reason of a run stopped because a call may have acted unrecorded (``OutcomeUnknownError``)."""


def _ended(cp: AgentCheckpoint, exc: BaseException) -> tuple[BaseException, Exception | None]:
    """The run ends on ``exc`` (an error, or one carried in a ``RunEnding``): the error to raise, and the
    agent's own error if it failed by one. A call that may have acted unrecorded (``OutcomeUnknownError``)
    stops the run resumable, not failed: its next drive settles the step from the journal, or in doubt,
    once the store is back."""
    error = exc.error if isinstance(exc, RunEnding) else exc
    if isinstance(error, OutcomeUnknownError):
        cp.status = "PREEMPTED"
        cp.preemption_reason = STORE_AWAY
        cp.preemption_payload = {"error": str(error)[:500]}
        return error, None
    cp.status = "FAILED"
    cp.error = f"{type(error).__name__}: {error}"
    return error, exc if isinstance(exc, Exception) else None


async def finish(ctx: RunContext, failed_by: Exception | None = None) -> None:
    """The run stopped (``failed_by``: the error the agent failed with): journal the failed steps it went
    past, keep the records held behind a step with none, persist the header, drop its ledger."""
    cp = ctx.checkpoint
    backend = ctx.services.backend
    await ctx.journal_failures_passed(completed=cp.status == "COMPLETED", ended_by=failed_by)
    # A resume serves the held records rather than making those calls again. A run that completed before
    # the journal reached them still made those calls: they stay with it, charged (a refund would leave
    # an effect that happened unaccounted for), and ``castor inspect`` lists them.
    cp.held = ctx.keep_held()
    if cp.held and cp.status == "COMPLETED":
        log.warning("run %s completed before its journal reached steps %s, whose calls were made; their "
                    "records are kept with the run, charged", cp.pid, ", ".join(map(str, cp.held)))
    ctx.update_capabilities()  # the journal is the truth of what was charged (and the kept records)
    cp.updated_at = time.time()
    await save_run(backend, cp)  # a run another process ended first keeps that end
    if ctx.ledger_open or ctx.spawned:  # a child's budget is charged to its parent's ledger
        await backend.budgets.close_run(cp.pid)
    _log_stop(cp)


RUN_END = {"castor_run_end": True}
"""The ``extra`` of the line a run's end is logged with: a program that reports the end itself (the CLI)
leaves it out."""


def _log_stop(cp: AgentCheckpoint) -> None:
    n = len(cp.syscall_log)
    steps = f"{n} step{'' if n == 1 else 's'}"
    if cp.status == "SUSPENDED_FOR_HITL":
        log.info("run %s suspended at step %s: %s waits for approval", cp.pid, cp.pending_step, cp.pending_tool,
                 extra=RUN_END)
    elif cp.status == "FAILED":
        log.warning("run %s failed after %s: %s", cp.pid, steps, cp.error, extra=RUN_END)
    elif cp.status == "PREEMPTED":
        log.info("run %s preempted after %s: %s", cp.pid, steps, cp.preemption_reason, extra=RUN_END)
    else:
        log.info("run %s %s after %s", cp.pid, cp.status.lower(), steps, extra=RUN_END)


def takes_proxy(agent: Callable[..., Any]) -> bool:
    """Legacy agents take one parameter: the syscall proxy."""
    if type(agent) is FunctionType and not agent.__dict__:
        # A plain function (no __wrapped__, __signature__ or other attribute inspect would read): its
        # positional parameters without a default, counted from its code as inspect counts them, without
        # building a Signature at every run.
        code = agent.__code__
        return code.co_argcount - len(agent.__defaults__ or ()) == 1
    try:
        params = [
            p for p in inspect.signature(agent).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        return False
    return len(params) == 1


def _named_pid(options: Mapping[str, Any]) -> str | None:
    """The pid of the run ``options`` name (``pid``, else the checkpoint's): an existing run's drive is
    claimed before it is read. None for a new run."""
    checkpoint = options.get("checkpoint")
    return options.get("pid") or (checkpoint.pid if checkpoint is not None else None)


def _check_runs_as(checkpoint: AgentCheckpoint | None, pid: str | None) -> None:
    """``ConfigError`` when a checkpoint is asked to run under another run's pid."""
    if checkpoint is not None and pid is not None and pid != checkpoint.pid:
        raise ConfigError(f"checkpoint {checkpoint.pid!r} cannot run as {pid!r}; use checkpoint.fork() for a new run")


async def run(services: Services, agent: Callable[..., Any], **options: Any) -> AgentCheckpoint:
    """Prepare and drive a run in the caller's task (``options``: those of ``prepare``). An existing run
    is driven by one process at a time: its drive is claimed before its checkpoint is read, so a second
    process reads what the first left."""
    pid = _named_pid(options)
    if pid is None or services.backend.leased:  # a new run; or a fleet coordinator's, driven under its lease
        ctx = await prepare(services, agent, **options)
        return await drive(ctx, agent)
    async with driving(services.backend.journal, pid) as held:
        ctx = await prepare(services, agent, **options)
        ctx.drive = held
        return await drive(ctx, agent)


class CastorTask:
    """A run started with ``run_async``: await it for the checkpoint, or preempt it."""

    def __init__(
        self, checkpoint: AgentCheckpoint, drives: Callable[[CastorTask], Coroutine[Any, Any, AgentCheckpoint]]
    ) -> None:
        self._preempted: list[Any] = []
        self.checkpoint = checkpoint  # the prepared run's, once its drive is claimed (``start``)
        self.task: asyncio.Task[AgentCheckpoint] = asyncio.create_task(drives(self))

    async def _drive(self, ctx: RunContext, agent: Callable[..., Any]) -> AgentCheckpoint:
        async with driving(ctx.services.backend.journal, ctx.checkpoint.pid) as held:
            ctx.drive = held
            return await drive(ctx, agent, self._preempted)

    async def _claim_and_drive(self, services: Services, agent: Callable[..., Any], pid: str,
                               options: dict[str, Any]) -> AgentCheckpoint:
        """Claim the run's drive, then prepare and drive it, as ``run`` does: a process that drives it now
        keeps it until it stops, and this one starts from what that one left."""
        started = False
        try:
            async with driving(services.backend.journal, pid) as held:
                ctx = await prepare(services, agent, **options)
                ctx.drive = held
                self.checkpoint, started = ctx.checkpoint, True
                return await drive(ctx, agent, self._preempted)
        except asyncio.CancelledError:
            if started or not self._preempted:
                raise
            return self.checkpoint  # preempted before it drove: the run is as the store (or its driver) has it

    @property
    def done(self) -> bool:
        """Whether the run has stopped."""
        return self.task.done()

    def preempt(self, reason: str, payload: dict[str, Any] | None = None) -> None:
        """Stop the run; it ends ``PREEMPTED`` with the reason and payload (or, still waiting for another
        process's drive of it to end, it is left as it is)."""
        if not self.task.done():
            self._preempted[:] = [reason, payload]
            self.task.cancel()

    def __await__(self) -> Any:
        return self.task.__await__()


async def start(services: Services, agent: Callable[..., Any], **options: Any) -> CastorTask:
    """Drive a run in its own task (``options``: those of ``prepare``). A new run is prepared here; an
    existing one (a pid or a checkpoint given) is prepared in the task once its drive is claimed: preparing
    writes the run's header and opens its budget ledger, which must wait while another process drives the
    run (a ledger reopened under that drive would forget its charges in flight, and a checkpoint read
    before that drive's last steps would run them again)."""
    pid = _named_pid(options)
    if pid is None:  # a new run: no other process knows its pid yet
        ctx = await prepare(services, agent, **options)
        return CastorTask(ctx.checkpoint, lambda task: task._drive(ctx, agent))
    if services.backend.leased:  # a fleet coordinator's run, driven under its lease
        ctx = await prepare(services, agent, **options)
        return CastorTask(ctx.checkpoint, lambda task: drive(ctx, agent, task._preempted))
    checkpoint = options.get("checkpoint")
    _check_runs_as(checkpoint, options.get("pid"))  # told here, not when the task is awaited
    shown = checkpoint or await services.backend.runs.load(pid) or new_checkpoint(pid, agent_name(agent), {})
    return CastorTask(shown, lambda task: task._claim_and_drive(services, agent, pid, options))


async def persist_all(services: Services, cp: AgentCheckpoint) -> None:
    """Write the checkpoint's header and every record the store lacks."""
    await sync_journal(services, cp)
    if cp.status in FINISHED:  # saved again as it ended: allowed; a run moved from its end is RunFinishedError
        await services.backend.runs.save(cp, reopen=cp.status)
    else:
        await services.backend.runs.save(cp)
    services.live[cp.pid] = cp
