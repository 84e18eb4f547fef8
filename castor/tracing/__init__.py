"""OpenTelemetry traces of the fleet (``castor[otel]``): a span per syscall on the coordinator, linked
through the Celery task to the worker's span of the tool task.

The coordinator's span context travels in the task's message headers (``castor_traceparent``), signed
with the fleet's secret and bound to the task's token (``castor.fleet.wire.trace_signature``): a worker
takes a parent only from a header a coordinator signed for that very task. A missing, forged or garbled
trace context never fails a task; its span then starts a trace of its own.

    castor coordinator --trace ...   castor worker --trace ...   (``enable`` below)

Spans go to ``CASTOR_OTEL_FILE`` (one JSON object a line, written as each span ends), else to the
tracer provider the application set globally, else to OTLP (``opentelemetry-exporter-otlp``, configured
by the standard ``OTEL_EXPORTER_OTLP_*`` variables). Spans carry run, step and tool; never arguments.

Nothing here imports OpenTelemetry until ``enable`` is called: ``ACTIVE`` is all a hot path checks.
"""

from __future__ import annotations

import os
from typing import Any

from castor._secret import digests_match
from castor.errors import ConfigError
from castor.fleet.wire import TRACE_SIGNATURE_HEADER, TRACEPARENT_HEADER, trace_signature

FILE_ENV = "CASTOR_OTEL_FILE"
ACTIVE = False  # set by enable(): the Celery executor adds a trace context to a task's headers only then
_tracer: Any = None
_secret: str | None = None


def enable(service: str, secret: str | None = None, *, provider: Any = None) -> Any:
    """Trace this process as ``service``; ``secret`` signs and checks trace contexts (a fleet without one
    sends and takes them unsigned). ``provider``: a ``TracerProvider`` to use (tests). Returns the tracer."""
    global ACTIVE, _tracer, _secret
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise ConfigError("--trace needs OpenTelemetry: pip install 'castor-kernel[otel]'") from exc
    if provider is None:
        provider = _provider(service, trace.get_tracer_provider())
    _tracer = provider.get_tracer("castor")
    _secret = secret or None
    ACTIVE = True
    return _tracer


def disable() -> None:
    """Stop tracing this process (tests)."""
    global ACTIVE, _tracer, _secret
    ACTIVE, _tracer, _secret = False, None, None


def tracer() -> Any:
    """The tracer ``enable`` set up; ``ConfigError`` before it."""
    if _tracer is None:
        raise ConfigError("tracing is not enabled (castor.tracing.enable)")
    return _tracer


def _provider(service: str, current: Any) -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    path = os.environ.get(FILE_ENV)
    if path:
        from .export import JsonLinesExporter

        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
        return provider
    if hasattr(current, "add_span_processor"):  # the application set up an SDK provider: use it
        return current
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ConfigError(
            f"--trace needs an exporter: set {FILE_ENV}=PATH, or pip install opentelemetry-exporter-otlp"
        ) from exc
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def outgoing(token: str | None) -> dict[str, str]:
    """The trace headers of a task with ``token``, sent from inside the current span ({} outside one)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)  # W3C trace context only: no baggage crosses the broker
    parent = carrier.get("traceparent")
    if not parent:
        return {}
    headers = {TRACEPARENT_HEADER: parent}
    if _secret:
        headers[TRACE_SIGNATURE_HEADER] = trace_signature(_secret, token, parent)
    return headers


def incoming(headers: Any, token: Any) -> tuple[Any, str]:
    """The parent context a task's ``headers`` carry for a task with ``token``, and what became of it:
    ``(context, "linked")``, or ``(None, "absent" | "unsigned" | "forged" | "invalid")``. Never raises."""
    try:
        parent = headers.get(TRACEPARENT_HEADER) if headers is not None else None
    except Exception:
        return None, "invalid"
    if not parent:
        return None, "absent"
    if not isinstance(parent, str) or len(parent) > 128:
        return None, "invalid"
    if _secret:
        signature = headers.get(TRACE_SIGNATURE_HEADER)
        if not isinstance(signature, str) or not signature:
            return None, "unsigned"
        expected = trace_signature(_secret, token if isinstance(token, str) else None, parent)
        if not digests_match(expected, signature):
            return None, "forged"
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = TraceContextTextMapPropagator().extract({"traceparent": parent})
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None, "invalid"
    return context, "linked"
