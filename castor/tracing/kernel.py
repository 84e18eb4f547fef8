"""The coordinator's span per syscall: an interceptor, so a kernel built without it pays nothing.

It runs after replay (a replayed step is no new work, and gets no span). The span is current while the
call goes through the rest of the chain, so the Celery executor puts its context in the task's headers
(``castor.tracing.outgoing``) and the worker's span becomes its child.
"""

from __future__ import annotations

from typing import Any

from castor.kernel.context import Handler, Syscall
from castor.metrics.outcomes import failure_of, outcome_of

from . import tracer


class SyscallSpans:
    """The interceptor (``Castor(interceptors=[SyscallSpans()])``): a span ``castor.syscall <tool>``."""

    def __init__(self, tracer_: Any = None) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.tracer = tracer_ or tracer()
        self._kind = SpanKind.INTERNAL
        self._error = Status(StatusCode.ERROR)
        self._status = Status

    async def __call__(self, call: Syscall, inner: Handler) -> Any:
        """Run the rest of the chain inside the call's span."""
        known = call.ctx.services.tools.find(call.tool_name) is not None
        tool = call.tool_name if known else "unknown"  # span names stay a closed set, as metric labels do
        attributes = {"castor.run_id": call.ctx.run_id, "castor.step": call.step, "castor.tool": tool}
        with self.tracer.start_as_current_span(
            f"castor.syscall {tool}", kind=self._kind, attributes=attributes,
            record_exception=False, set_status_on_exception=False,
        ) as span:
            try:
                response = await inner(call)
            except BaseException as exc:
                outcome = failure_of(exc)
                span.set_attribute("castor.outcome", outcome)
                if outcome in ("error", "in_doubt"):
                    span.set_status(self._status(self._error.status_code, type(exc).__name__))
                raise
            span.set_attribute("castor.outcome", outcome_of(response))
            if call.decided_by:
                span.set_attribute("castor.decided_by", call.decided_by)
            return response


def instrument_coordinator(coordinator: Any) -> SyscallSpans:
    """Give ``coordinator``'s kernels a span per syscall."""
    spans = SyscallSpans()
    coordinator.kernels.interceptors.append(spans)
    return spans
