"""pydantic-ai's telemetry of a replayed run: the spans and metrics of steps served from the journal are
not reported again (``castor.frameworks.pydantic_ai``).

A resumed or forked run replays the agent's loop; pydantic-ai's instrumentation (``Instrumentation``,
Logfire) would report every replayed model request and tool call again, with its tokens counted twice in
the run's metrics. pydantic-ai's durable engines (Temporal, DBOS) have the same problem and the same
answer: the run goes inside ``replay_scope()``, and each durable unit tells pydantic-ai whether it ran
(``record_durable_unit``); a span whose units were all replayed is never ended, so never exported. Here a
unit is a model request or a tool call, replayed when its step is the journal's already.

A streamed request is not reported: pydantic-ai reads a stream in the task that consumes it, while the
request's span belongs to another task, and a unit is credited to the spans of the task that reports it.
A replayed streamed request's span is exported again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from castor.kernel.context import current_run

try:
    from pydantic_ai.durable_exec import record_durable_unit, replay_scope
except ImportError:  # a pydantic-ai before replay scopes: its telemetry repeats the replayed steps
    def record_durable_unit(*, executed: bool) -> None:
        """Nothing to tell this pydantic-ai."""

    @contextmanager
    def replay_scope() -> Iterator[None]:  # type: ignore[misc]
        """No scope in this pydantic-ai."""
        yield


def next_step_journaled() -> bool:
    """Whether the run's next step (the one a call made now claims) is served from the journal. Without
    the MMU a tool call claims its step before it awaits anything; with it, the call is counted as run."""
    ctx = current_run.get()
    if ctx is None or ctx.services.mmu is not None:
        return False
    step = ctx.next_step
    return step < len(ctx.checkpoint.syscall_log) or step in ctx.held_steps


__all__ = ["next_step_journaled", "record_durable_unit", "replay_scope"]
