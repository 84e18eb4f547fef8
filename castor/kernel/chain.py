"""The syscall handler chain: every tool call an agent makes passes these stages, in this order, here only.

    replay → interceptors → validate → gate → budget → execute (+ journal)

Each stage is a function ``stage(call, inner)`` over one typed input, ``Syscall``; adding a field to
it breaks no signature. The chain is built once per kernel (``build_chain``); the interceptors are the
ones declared with ``Castor(interceptors=[...])`` (``castor.kernel.context.Interceptor``). A stage either
answers (a replayed result, a ``VALIDATION_ERROR``, a human's rejection, an ``INSUFFICIENT_CAPABILITY``)
or passes the call inward. Whatever the agent receives from a live step is journaled before it sees it
(``castor.kernel.steps``).

Speed: a stage returns an awaitable rather than being a coroutine itself, so a stage that only
passes a call inward (replay on a live step, the gate for a safe tool) costs a function call, not a
coroutine frame. Only stages that must wait for something (a charge, the tool) are coroutines.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from time import monotonic
from typing import Any

from castor._redact import redact
from castor.checkpoint import USAGE_STRIDE, StepFailure, bounded_arguments, usage_after
from castor.errors import (
    BackendUnavailable,
    CastorError,
    InDoubtError,
    OutcomeUnknownError,
    RemoteToolError,
    UnknownToolError,
)
from castor.kernel.claims import run_claimed
from castor.kernel.context import Handler, Interceptor, RunEnding, Syscall, confirmed, outcome_unknown, unrecorded
from castor.kernel.steps import (
    HITL_SPECULATIVE_REASON,
    IN_DOUBT_REASON,
    SPECULATIVE_REASON,
    answer,
    replay,
    suspend_for_human,
)
from castor.registry import ToolSpec

Stage = Callable[..., Awaitable[Any]]  # def stage(call: Syscall, inner: Handler) -> Awaitable[Any]


def build_chain(interceptors: Sequence[Interceptor] = ()) -> Handler:
    """The handler chain: replay, then ``interceptors`` in order, then the kernel's own stages around
    ``execute``. An interceptor whose ``sees_replay`` attribute is true goes before replay instead (it sees
    replayed steps too: ``castor.metrics`` counts them)."""
    outer = [i for i in interceptors if getattr(i, "sees_replay", False)]
    inner = [i for i in interceptors if not getattr(i, "sees_replay", False)]
    return wrap([*outer, replay, *inner, *KERNEL_STAGES], execute)


def wrap(stages: Iterable[Stage], terminal: Handler) -> Handler:
    """Wrap ``terminal`` in ``stages``, the first stage outermost."""
    handler = terminal
    for stage in reversed(list(stages)):
        handler = _bound(stage, handler)
    return handler


def _bound(stage: Stage, inner: Handler) -> Handler:
    # A closure rather than functools.partial(stage, inner=...): a partial's keyword is a dict copied and
    # unpacked on every call, about twice the cost of this frame, on each stage of every step.
    def handler(call: Syscall) -> Awaitable[Any]:
        return stage(call, inner)

    handler.stage = stage  # type: ignore[attr-defined]  # which stage this is, for whoever inspects the chain
    return handler


# --- validate ----------------------------------------------------------------------------------


def validate(call: Syscall, inner: Handler) -> Awaitable[Any]:
    """Check the arguments against the tool's schema; a bad call is answered, not executed."""
    spec = call.ctx.services.tools.find(call.tool_name)
    if spec is None:
        raise UnknownToolError(call.tool_name, call.ctx.services.tools.names())
    call.spec = spec
    checked, error = spec.schema.check(call.arguments)
    if error is not None:
        return answer(call, {"status": "VALIDATION_ERROR", "feedback_message": error, "tool_name": call.tool_name})
    call.checked = checked
    drive = call.ctx.drive
    if drive is not None and (drive.lost or monotonic() > drive.sure_until):
        return confirmed(drive, inner, call)  # the process stalled: nothing more if the run was taken over
    return inner(call)


# --- gate --------------------------------------------------------------------------------------


def gate(call: Syscall, inner: Handler) -> Awaitable[Any]:
    """Destructive calls wait for a human, or run speculatively flagged for review.

    A step left in doubt by a lost worker (``checkpoint.in_doubt``) waits for a human whatever the tool
    or mode: its new approval round must be decided before it may run again. A gated call that runs is
    claimed first (``castor.kernel.claims``): of several processes driving the run, one runs it. So is a
    non-idempotent call a coordinator runs itself (a leased store, an executor that does not journal):
    the drive that takes the run over finds it in doubt rather than running it a second time.
    """
    # Set by validate, which runs before every inner stage (an annotation, not typing.cast: no call per step).
    spec: ToolSpec = call.spec  # type: ignore[assignment]
    in_doubt = call.ctx.checkpoint.in_doubt
    if in_doubt and call.step in in_doubt:
        return _ask_human(call, inner)
    if not spec.gated:
        if spec.idempotent or not call.ctx.claims_calls:
            return inner(call)
        return run_claimed(call, inner)  # a fleet's drive runs it in-process: claimed, never run twice
    if call.ctx.speculative:
        call.needs_review = True
        call.review_reason = SPECULATIVE_REASON if spec.destructive else HITL_SPECULATIVE_REASON
        return run_claimed(call, inner)
    return _ask_human(call, inner)


async def _ask_human(call: Syscall, inner: Handler) -> Any:
    ctx = call.ctx
    backend = ctx.services.backend
    decision = await backend.approvals.decision(ctx.run_id, call.step)
    reopened = ctx.checkpoint.in_doubt.get(call.step, 0)
    if decision is not None and decision.attempt < reopened:
        decision = None  # decides an earlier round: it does not authorize running the step again
    if decision is None:
        # Never ask a human to approve what the budget cannot pay for: let the budget stage deny it.
        affordable = await backend.budgets.can_afford(ctx.run_id, cost_of(call), ctx.scopes)
        if not affordable.ok:
            return await inner(call)
        await suspend_for_human(call, reopened, IN_DOUBT_REASON if reopened else "")
    call.was_hitl = True
    call.decided_by = decision.by
    call.attempt = decision.attempt
    if decision.outcome == "reject":
        return await answer(call, {"status": "HITL_REJECTED", "human_feedback": decision.reason})
    if decision.outcome == "modify":
        return await answer(call, {"status": "HITL_MODIFIED", "human_feedback": decision.reason})
    return await run_claimed(call, inner)  # one process runs an approved call; the others take its record


# --- budget ------------------------------------------------------------------------------------


def cost_of(call: Syscall) -> Mapping[str, float]:
    """What one call of the tool costs; a budget named after the tool counts its calls."""
    spec: ToolSpec = call.spec  # type: ignore[assignment]
    if spec.name in call.ctx.checkpoint.capabilities:
        return {**spec.cost, spec.name: 1.0}
    return spec.cost


def budget(call: Syscall, inner: Handler) -> Awaitable[Any]:
    """Reserve the call's cost atomically; refund it if the tool never produced a result.

    Only what a ledger tracks is drawn: the resources the run has limits on (its checkpoint's
    capabilities, which ``open_run`` gave the store), or all of them when the run draws from shared
    scopes. A charge of nothing is not made at all, unless the store must check on every charge that
    this process still owns the run (a fenced coordinator: ``charges_free_calls``). The journal records
    the whole cost, so usage stays exact.
    """
    ctx = call.ctx
    caps = ctx.checkpoint.capabilities
    if not caps and not ctx.scopes and not ctx.charges_free_calls:  # a run without budgets: nothing drawn
        call.charged = call.spec.cost  # type: ignore[union-attr]  # set by validate
        return inner(call)
    cost = cost_of(call)
    tracked = cost if ctx.scopes or caps.keys() >= cost.keys() else {r: a for r, a in cost.items() if r in caps}
    if not tracked and not ctx.charges_free_calls:
        call.charged = cost  # nothing drawn, so nothing to refund: no coroutine of this stage's on the step
        return inner(call)
    return _charged(call, inner, cost, tracked)


async def _charged(call: Syscall, inner: Handler, cost: Mapping[str, float], tracked: Mapping[str, float]) -> Any:
    ctx = call.ctx
    budgets = ctx.budgets
    charge = await budgets.charge(ctx.run_id, call.step, tracked, ctx.scopes)
    if not charge.ok:
        return await answer(
            call,
            {
                "status": "INSUFFICIENT_CAPABILITY",
                "feedback_message": (
                    f"budget exhausted for '{charge.short}': {call.tool_name} needs "
                    f"{_amount(cost, charge.short)}, {charge.remaining:g} left"
                ),
                "resource": charge.short,
            },
        )
    call.charged = cost
    try:
        return await inner(call)
    except BaseException as exc:
        if tracked and not outcome_unknown(exc):  # nothing was taken otherwise; or the call may have acted
            await budgets.refund(ctx.run_id, call.step)
        raise


def _amount(cost: Mapping[str, float], short: str | None) -> str:
    resource = (short or "").rsplit(":", 1)[-1]
    return f"{cost.get(resource, 0):g}"


# --- execute -----------------------------------------------------------------------------------


async def execute(call: Syscall) -> Any:
    """Run the tool through the executor and journal its result; journal a failure for audit."""
    spec: ToolSpec = call.spec  # type: ignore[assignment]  # set by validate, as call.checked
    ctx = call.ctx
    run_id = ctx.run_id
    executor = ctx.services.executor
    journals = executor.writes_journal
    if journals:
        step = call.step
        if step % USAGE_STRIDE == USAGE_STRIDE - 1 and len(ctx.checkpoint.syscall_log) == step:
            # The executor builds the record: it carries the run's usage snapshot, as commit would add it.
            call.usage = usage_after(ctx.usage, call.charged)
    try:
        result = await executor.execute(call)  # the call itself: nothing is copied for the executor
    except OutcomeUnknownError as exc:
        # Not a failure of the call: whether it acted is unknown (the store went away once its task was out).
        # Carried past the agent's own error handling, which would make the call again; the run stops.
        raise RunEnding(exc) from exc
    except Exception as exc:
        failure = StepFailure(
            step=call.step,
            tool_name=call.tool_name,
            # Journaled and kept in the checkpoint: sensitive values stay out, as of a worker's failure entry.
            arguments=bounded_arguments(redact(call.arguments, spec.sensitive)),
            # A worker's error keeps the type name the tool raised there (RemoteToolError.error_type).
            error_type=(exc.error_type if isinstance(exc, RemoteToolError) else "") or type(exc).__name__,
            message=(exc.tool_message if isinstance(exc, RemoteToolError) else "") or str(exc),
        )
        ctx.checkpoint.failures.append(failure)
        if not (isinstance(exc, CastorError) and exc.failure_journaled):  # a worker journals what happened on it
            await ctx.services.backend.journal.record_failure(run_id, failure)
        if isinstance(exc, InDoubtError):
            # The worker died mid-call and the tool may not run twice: a human decides, in a new round.
            ctx.checkpoint.in_doubt[call.step] = call.attempt + 1
            await suspend_for_human(call, call.attempt + 1, IN_DOUBT_REASON)
        raise
    # The record is committed here rather than through answer(): one coroutine fewer on every live step.
    # The executor that journaled the record set when it finished: this is the very record it journaled.
    try:
        record = await ctx.commit(call.step, call.record(result), stored=journals)
    except BackendUnavailable as exc:
        raise unrecorded(call, exc) from exc
    return record.response


KERNEL_STAGES: tuple[Stage, ...] = (validate, gate, budget)
"""The kernel's own stages after replay and the interceptors; ``execute`` is the terminal handler."""
