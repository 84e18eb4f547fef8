"""The syscall path: every tool call an agent makes passes these stages, in this order, here only.

    replay → validate → gate → budget → execute (+ journal)

Each stage is a function ``stage(call, inner)`` over one typed input, ``Syscall``; adding a field to
it breaks no signature. The stack is built once per kernel. A stage either answers (a replayed
result, a ``VALIDATION_ERROR``, a human's rejection, an ``INSUFFICIENT_CAPABILITY``) or passes the
call inward. Whatever the agent receives from a live step is journaled before it sees it.

Speed: a stage returns an awaitable rather than being a coroutine itself, so a stage that only
passes a call inward (replay on a live step, the gate for a safe tool) costs a function call, not a
coroutine frame. Only stages that must wait for something (a charge, the tool) are coroutines.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from castor._canonical import canonical
from castor._claims import run_claimed
from castor._context import RunContext, Suspend
from castor._errors import InDoubtError, ReplayDivergenceError, UnknownToolError
from castor._redact import masked, redact
from castor._sealing import DataKey, digested, encrypted, foreign_digests
from castor.checkpoint import StepFailure, SyscallRecord, bounded_arguments, new_record
from castor.registry import ToolSpec
from castor.seams import Call, PendingApproval

SPECULATIVE_REASON = "destructive tool executed speculatively; review before trusting its effect"
HITL_SPECULATIVE_REASON = "tool requires human review; executed speculatively"
IN_DOUBT_REASON = "in doubt after worker loss"


@dataclass(slots=True)
class Syscall:
    """One tool call on its way through the kernel."""

    ctx: RunContext
    step: int
    tool_name: str
    arguments: dict[str, Any]
    spec: ToolSpec | None = None
    checked: dict[str, Any] | None = None
    charged: Mapping[str, float] | None = None
    was_hitl: bool = False
    decided_by: str | None = None
    needs_review: bool = False
    review_reason: str | None = None
    attempt: int = 0  # the approval round that let the call run (>= 1 after its worker was lost)

    @property
    def request(self) -> dict[str, Any]:
        """The request as journaled: the tool and its raw arguments, sensitive values as keyed digests."""
        return {"tool_name": self.tool_name, "arguments": self.stored_arguments(digested)}

    def stored_arguments(self, seal: Callable[[dict[str, Any], frozenset[str], DataKey], dict[str, Any]]) -> Any:
        """The raw arguments with their sensitive values sealed by ``seal`` (``castor._sealing``)."""
        spec = self.spec or self.ctx.kernel.tools.find(self.tool_name)
        if spec is None or not spec.sensitive:
            return self.arguments
        return seal(self.arguments, spec.sensitive, self.ctx.kernel.data_key)


Handler = Callable[[Syscall], Awaitable[Any]]
Stage = Callable[..., Awaitable[Any]]  # def stage(call: Syscall, inner: Handler) -> Awaitable[Any]


def build_path(stages: list[Stage], terminal: Handler) -> Handler:
    """Wrap ``terminal`` in ``stages``, the first stage outermost."""
    handler = terminal
    for stage in reversed(stages):
        handler = functools.partial(stage, inner=handler)
    return handler


def record_fields(call: Syscall, charged: Mapping[str, float] | None) -> dict[str, Any]:
    """Everything a step's record holds except its response."""
    return {
        "request": call.request,
        "was_hitl": call.was_hitl,
        "needs_review": call.needs_review,
        "review_reason": call.review_reason,
        "child_checkpoint": None,
        "charged": dict(charged) if charged else {},
        "decided_by": call.decided_by,
    }


async def answer(
    call: Syscall, response: Any, charged: Mapping[str, float] | None = None, *, stored: bool = False
) -> Any:
    """Journal ``response`` as the step's result and return it to the agent (or the step's record
    another process driving the run journaled first, which stands)."""
    record = await call.ctx.commit(call.step, step_record(call, response, charged), stored=stored)
    return record.response


def step_record(call: Syscall, response: Any, charged: Mapping[str, float] | None) -> SyscallRecord:
    """The journal record of ``call`` answered with ``response``."""
    return new_record(
        call.request,
        response,
        was_hitl=call.was_hitl,
        needs_review=call.needs_review,
        review_reason=call.review_reason,
        charged=charged,  # type: ignore[arg-type]  # a tool's cost mapping, never mutated: shared, not copied
        decided_by=call.decided_by,
        finished_at=time.time(),
    )


async def _value(value: Any) -> Any:
    return value


# --- 1. replay ------------------------------------------------------------------------------------


def replay(call: Syscall, inner: Handler) -> Awaitable[Any]:
    """Serve a journaled step from the cache, after checking it is the same call."""
    log = call.ctx.checkpoint.syscall_log
    if call.step >= len(log):
        return inner(call)
    record = log[call.step]
    request = record.request
    if request.get("tool_name") != call.tool_name or not _same_call(request.get("arguments"), call):
        raise ReplayDivergenceError(call.step, request, call.request)
    return _value(record.response)


def _same_call(recorded: Any, call: Syscall) -> bool:
    """The journal keeps sensitive values as keyed digests (a journal written before that, as they are).
    A digest under another key (a checkpoint's JSON resumed on another store) cannot be compared: the rest
    of the call must still match."""
    if same_arguments(recorded, call.arguments):
        return True
    spec = call.ctx.kernel.tools.find(call.tool_name)
    if spec is None or not spec.sensitive:
        return False
    if same_arguments(recorded, call.request["arguments"]):
        return True
    key = call.ctx.kernel.data_key
    return foreign_digests(recorded, key) and same_arguments(masked(recorded), redact(call.arguments, spec.sensitive))


def same_arguments(recorded: Any, actual: dict[str, Any]) -> bool:
    """Equal as canonical JSON: a list recorded for a tuple, or another key order, still matches."""
    if recorded == actual:
        return True
    return bool(canonical(recorded) == canonical(actual))


# --- 2. validate ----------------------------------------------------------------------------------


def validate(call: Syscall, inner: Handler) -> Awaitable[Any]:
    """Check the arguments against the tool's schema; a bad call is answered, not executed."""
    spec = call.ctx.kernel.tools.find(call.tool_name)
    if spec is None:
        raise UnknownToolError(call.tool_name, call.ctx.kernel.tools.names())
    call.spec = spec
    checked, error = spec.schema.check(call.arguments)
    if error is not None:
        return answer(call, {"status": "VALIDATION_ERROR", "feedback_message": error, "tool_name": call.tool_name})
    call.checked = checked
    return inner(call)


# --- 3. gate --------------------------------------------------------------------------------------


def gate(call: Syscall, inner: Handler) -> Awaitable[Any]:
    """Destructive calls wait for a human, or run speculatively flagged for review.

    A step left in doubt by a lost worker (``checkpoint.in_doubt``) waits for a human whatever the tool
    or mode: its new approval round must be decided before it may run again. A gated call that runs is
    claimed first (``castor._claims``): of several processes driving the run, one runs it. So is a
    non-idempotent call a coordinator runs itself (a leased store, an executor that does not journal):
    the drive that takes the run over finds it in doubt rather than running it a second time.
    """
    # Set by validate, which runs before every inner stage (an annotation, not typing.cast: no call per step).
    spec: ToolSpec = call.spec  # type: ignore[assignment]
    in_doubt = call.ctx.checkpoint.in_doubt
    if in_doubt and call.step in in_doubt:
        return _ask_human(call, inner)
    if not spec.gated:
        if spec.idempotent or not call.ctx.kernel.backend.leased or call.ctx.kernel.executor.writes_journal:
            return inner(call)
        return run_claimed(call, inner)  # a fleet's drive runs it in-process: claimed, never run twice
    if call.ctx.speculative:
        call.needs_review = True
        call.review_reason = SPECULATIVE_REASON if spec.destructive else HITL_SPECULATIVE_REASON
        return run_claimed(call, inner)
    return _ask_human(call, inner)


async def _ask_human(call: Syscall, inner: Handler) -> Any:
    ctx = call.ctx
    backend = ctx.kernel.backend
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


async def suspend_for_human(call: Syscall, attempt: int, reason: str) -> NoReturn:
    """Open approval round ``attempt`` of the step and unwind the run until a human decides it."""
    ctx = call.ctx
    # The pending call keeps its sensitive values encrypted: an approval may execute it in another process.
    arguments = call.stored_arguments(encrypted)
    await ctx.kernel.backend.approvals.request(
        PendingApproval(ctx.run_id, call.step, call.tool_name, arguments, time.time(), None, reason, attempt)
    )
    ctx.suspended_at = call.step
    cp = ctx.checkpoint
    cp.pending_hitl = {"tool_name": call.tool_name, "arguments": arguments}
    cp.pending_step = call.step
    cp.pending_reason = reason or None
    raise Suspend(call.step)


# --- 4. budget ------------------------------------------------------------------------------------


def cost_of(call: Syscall) -> Mapping[str, float]:
    """What one call of the tool costs; a budget named after the tool counts its calls."""
    spec: ToolSpec = call.spec  # type: ignore[assignment]
    if spec.name in call.ctx.checkpoint.capabilities:
        return {**spec.cost, spec.name: 1.0}
    return spec.cost


async def budget(call: Syscall, inner: Handler) -> Any:
    """Reserve the call's cost atomically; refund it if the tool never produced a result.

    Only what a ledger tracks is drawn: the resources the run has limits on (its checkpoint's
    capabilities, which ``open_run`` gave the store), or all of them when the run draws from shared
    scopes. A charge of nothing costs a store no round trip — unless the store must check that this
    process still owns the run (a fenced coordinator), which it then does. The journal records the
    whole cost, so usage stays exact.
    """
    ctx = call.ctx
    cost = cost_of(call)
    caps = ctx.checkpoint.capabilities
    tracked = cost if ctx.scopes or caps.keys() >= cost.keys() else {r: a for r, a in cost.items() if r in caps}
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
    except BaseException:
        if tracked:  # nothing was taken otherwise
            await budgets.refund(ctx.run_id, call.step)
        raise


def _amount(cost: Mapping[str, float], short: str | None) -> str:
    resource = (short or "").rsplit(":", 1)[-1]
    return f"{cost.get(resource, 0):g}"


# --- 5. execute -----------------------------------------------------------------------------------


async def execute(call: Syscall) -> Any:
    """Run the tool through the executor and journal its result; journal a failure for audit."""
    spec: ToolSpec = call.spec  # type: ignore[assignment]
    checked: dict[str, Any] = call.checked  # type: ignore[assignment]  # both set by validate
    ctx = call.ctx
    run_id = ctx.run_id
    executor = ctx.kernel.executor
    work = Call(
        run_id, call.step, call.tool_name, checked, f"{run_id}:{call.step}", spec.timeout,
        call.decided_by, call.attempt,
    )
    if executor.writes_journal:
        work.record = record_fields(call, call.charged)
    try:
        result = await executor.execute(work)
    except Exception as exc:
        failure = StepFailure(
            step=call.step,
            tool_name=call.tool_name,
            # Journaled and kept in the checkpoint: sensitive values stay out, as of a worker's failure entry.
            arguments=bounded_arguments(redact(call.arguments, spec.sensitive)),
            # A worker's error keeps the type name the tool raised there (RemoteToolError.error_type).
            error_type=getattr(exc, "error_type", None) or type(exc).__name__,
            message=getattr(exc, "tool_message", None) or str(exc),
        )
        ctx.checkpoint.failures.append(failure)
        if not getattr(exc, "failure_journaled", False):  # a worker journals what happened on it
            await ctx.kernel.backend.journal.record_failure(run_id, failure)
        if isinstance(exc, InDoubtError):
            # The worker died mid-call and the tool may not run twice: a human decides, in a new round.
            ctx.checkpoint.in_doubt[call.step] = call.attempt + 1
            await suspend_for_human(call, call.attempt + 1, IN_DOUBT_REASON)
        raise
    # The record is committed here rather than through answer(): one coroutine fewer on every live step.
    record = await ctx.commit(call.step, step_record(call, result, call.charged), stored=executor.writes_journal)
    return record.response


DEFAULT_STAGES: list[Stage] = [replay, validate, gate, budget]
