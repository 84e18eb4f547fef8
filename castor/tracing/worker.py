"""The worker's span per tool task, the child of the coordinator's syscall span when the task carries a
trace context its coordinator signed for it (``castor.tracing.incoming``); a root span otherwise."""

from __future__ import annotations

from typing import Any

from castor.fleet.wire import TASK_PREFIX

from . import incoming, tracer


def task_headers() -> Any:
    """The message headers of the Celery task this thread runs (Celery keeps custom headers on the
    request), or None outside a task."""
    try:
        from celery import current_task

        request = current_task.request if current_task else None
    except Exception:
        return None
    return request if request is not None else None


def instrument_worker(runtime: Any, headers: Any = task_headers) -> None:
    """Wrap ``runtime.handle`` (a ``WorkerRuntime``'s) in a span ``castor.task <tool>``; ``headers`` gives
    the current task's headers (an object with ``get``)."""
    from opentelemetry.trace import SpanKind

    trace = tracer()
    known = {spec.name for spec in runtime.registry}
    handle = runtime.handle

    def traced(kwargs: Any, name: str, retries: int = 0, delivery: Any = None) -> Any:
        tool = name[len(TASK_PREFIX):] if name.startswith(TASK_PREFIX) else ""
        tool = tool if tool in known else "unknown"
        token = kwargs.get("token") if isinstance(kwargs, dict) else None
        parent, link = incoming(headers(), token)
        attributes = {"castor.tool": tool, "castor.pool": runtime.pool, "castor.trace_context": link,
                      "celery.retries": retries}
        if isinstance(kwargs, dict):
            attributes.update({"castor.run_id": str(kwargs.get("run_id", ""))[:200],
                               "castor.step": str(kwargs.get("step", ""))[:20]})
        with trace.start_as_current_span(f"castor.task {tool}", context=parent, kind=SpanKind.CONSUMER,
                                         attributes=attributes) as span:
            outcome = handle(kwargs, name, retries, delivery)
            span.set_attribute("castor.outcome", "retry" if outcome.retry_in is not None else outcome.status)
            return outcome

    runtime.handle = traced
