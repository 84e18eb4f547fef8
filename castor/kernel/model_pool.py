"""A model call of the fleet's ``llm`` pool, from the coordinator's side (``castor.kernel.model``'s execute).

The executor sends the step to a worker of the pool, which calls the provider under the fleet's rate limits,
settles the reservation to the usage reported and journals the step (``castor.fleet.workers._models``): this
process takes the journaled record. A stream (``castor.lib.stream``) is sent with ``stream`` set in the
task's checked arguments: the worker forwards each chunk as the provider sends it, and the executor hands
them to the agent as they come (``CeleryExecutor.execute_stream``). A call whose worker was lost is in doubt
(``castor.kernel.model_doubt``): by default it is sent again, in a round of its own, with the first call's
charge (``spent``) for the worker to settle beside the second one's usage.
"""

from __future__ import annotations

from typing import Any

from castor._redact import redact
from castor.checkpoint import USAGE_STRIDE, StepFailure, bounded_arguments
from castor.errors import (
    BackendUnavailable,
    CastorError,
    InDoubtError,
    OutcomeUnknownError,
    RemoteToolError,
    ToolTimeoutError,
)
from castor.kernel.context import RunEnding, unrecorded
from castor.kernel.model import ModelSyscall, record_failed
from castor.kernel.model_doubt import in_doubt, recharge, remade
from castor.llm.types import ModelCallError, ModelTimeoutError


async def on_pool(call: ModelSyscall) -> Any:
    """Send the call to a worker of the ``llm`` pool and take the record it journaled. A step the worker
    answered from the journal (a takeover's second send) is not called again, nor charged again."""
    ctx = call.ctx
    step = call.step
    if call.redo:  # made again after going in doubt: the first call stays charged beside this one
        refused = await recharge(call)
        if refused is not None:
            return refused
    elif ctx.checkpoint.failures:
        # A drive that took the run over sends the round the step was last made in: the worker running
        # it (or its record) answers, rather than a refusal of an earlier round.
        call.attempt = max(call.attempt, remade(call))
    if step % USAGE_STRIDE == USAGE_STRIDE - 1 and len(ctx.checkpoint.syscall_log) == step:
        call.usage = dict(ctx.usage)  # the run's usage before the step: the worker adds what the call used
    try:
        await _send(call)
    except OutcomeUnknownError as exc:  # its task is out, and the store went away: the run stops (no retry)
        raise RunEnding(exc) from exc
    except Exception as exc:
        await _journal_failure(call, exc)
        received = call.partial is not None and call.partial() is not None  # a stream gave the agent text
        retry = isinstance(exc, InDoubtError) and call.models.in_doubt != "fail" and not received
        if retry and await in_doubt(call, str(exc), call.attempt):  # else it raised, or suspended for a human
            return await on_pool(call)
        if call.spent is not None or received:
            # a stream cut short is charged what it received; a call made again keeps the first one's charge
            await record_failed(call, exc)
        raise _model_error(call, exc) from exc
    call.settled = True  # by the worker, before it journaled the step
    try:
        record = await ctx.journal.get(ctx.run_id, step)
        if record is None:
            raise ModelCallError(f"model {call.model!r} answered (run {ctx.run_id}, step {step}) but left no record")
        committed = await ctx.commit(step, record, stored=True)
    except BackendUnavailable as exc:
        raise unrecorded(call, exc) from exc
    return committed.response


async def _send(call: ModelSyscall) -> None:
    """Send the task; its checked arguments say whether to stream and what a call made again was charged."""
    extra: dict[str, Any] = {}
    if call.spent is not None:
        extra["spent"] = call.spent
    executor: Any = call.ctx.services.executor
    streams = call.chunk is not None and hasattr(executor, "execute_stream")
    if streams:
        extra["stream"] = True
    call.checked = {**call.arguments, **extra} if extra else call.arguments
    if streams:
        await executor.execute_stream(call, call.chunk)
    else:
        await executor.execute(call)


async def _journal_failure(call: ModelSyscall, exc: Exception) -> None:
    """The failure, kept in the checkpoint and journaled unless the worker journaled it."""
    ctx = call.ctx
    failure = StepFailure(
        step=call.step, tool_name=call.tool_name, arguments=bounded_arguments(redact(call.arguments, frozenset())),
        error_type=getattr(exc, "error_type", "") or type(exc).__name__,
        message=getattr(exc, "tool_message", "") or str(exc),
    )
    ctx.checkpoint.failures.append(failure)
    if not (isinstance(exc, CastorError) and exc.failure_journaled):
        await ctx.services.backend.journal.record_failure(ctx.run_id, failure)


def _model_error(call: ModelSyscall, exc: Exception) -> Exception:
    """What the agent gets for a model call that failed on the pool: a ``ModelCallError`` (a timeout a
    ``ModelTimeoutError``); a step in doubt or a refused task as the executor raised it."""
    if isinstance(exc, ToolTimeoutError):
        error: CastorError = ModelTimeoutError(f"model {call.model!r} on the llm pool: {exc}")
    elif isinstance(exc, RemoteToolError):
        error = ModelCallError(f"model {call.model!r} on the llm pool: {exc.error_type}: {exc.tool_message}")
    else:
        return exc
    error.failure_journaled = True
    return error
