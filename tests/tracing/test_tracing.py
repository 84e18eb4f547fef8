"""Trace contexts cross the broker signed; a forged, copied, missing or garbled one never fails a task."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from castor import Castor, tracing
from castor.fleet.wire import TRACE_SIGNATURE_HEADER, TRACEPARENT_HEADER
from castor.lib import tool
from castor.tracing.kernel import SyscallSpans
from castor.tracing.worker import instrument_worker


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.enable("test", "s3cret", provider=provider)
    try:
        yield memory
    finally:
        tracing.disable()


def sent(token: str) -> dict[str, str]:
    with tracing.tracer().start_as_current_span("syscall"):
        return tracing.outgoing(token)


def test_a_signed_context_links_only_the_task_it_was_signed_for(exporter: InMemorySpanExporter) -> None:
    headers = sent("token-1")
    assert set(headers) == {TRACEPARENT_HEADER, TRACE_SIGNATURE_HEADER}
    context, link = tracing.incoming(headers, "token-1")
    assert link == "linked" and context is not None
    assert tracing.incoming(headers, "token-2") == (None, "forged")  # copied onto another task
    forged = {**headers, TRACEPARENT_HEADER: headers[TRACEPARENT_HEADER][:-2] + "00"}
    assert tracing.incoming(forged, "token-1") == (None, "forged")
    assert tracing.incoming({TRACEPARENT_HEADER: headers[TRACEPARENT_HEADER]}, "token-1") == (None, "unsigned")
    assert tracing.incoming({}, "token-1") == (None, "absent")
    assert tracing.incoming(None, "token-1") == (None, "absent")
    assert tracing.incoming({TRACEPARENT_HEADER: ["x"]}, "token-1") == (None, "invalid")
    assert tracing.incoming(42, "token-1") == (None, "invalid")
    # a signature of characters hmac cannot compare (a header anyone on the broker can set): forged, not raised
    assert tracing.incoming({**headers, TRACE_SIGNATURE_HEADER: "é" * 64}, "token-1") == (None, "forged")


def test_outside_a_span_nothing_is_sent(exporter: InMemorySpanExporter) -> None:
    assert tracing.outgoing("token") == {}


def test_a_garbled_but_signed_context_is_invalid_not_an_error(exporter: InMemorySpanExporter) -> None:
    from castor.fleet.wire import trace_signature

    garbled = "00-zz-yy-01"
    headers = {TRACEPARENT_HEADER: garbled, TRACE_SIGNATURE_HEADER: trace_signature("s3cret", "t", garbled)}
    assert tracing.incoming(headers, "t") == (None, "invalid")


@dataclass
class Outcome:
    status: str
    retry_in: float | None = None


def fake_runtime(calls: list[Any]) -> Any:
    def handle(kwargs: Any, name: str, retries: int = 0, delivery: Any = None) -> Outcome:
        calls.append(kwargs)
        return Outcome("ok")

    return SimpleNamespace(registry=[SimpleNamespace(name="fetch")], pool="web", handle=handle)


@pytest.mark.parametrize("forgery", ["other token", "no signature", "garbage", "no headers"])
def test_a_worker_runs_a_task_whose_context_is_forged_under_a_root_span(
    exporter: InMemorySpanExporter, forgery: str
) -> None:
    headers = sent("real")
    exporter.clear()
    token = "real"
    if forgery == "other token":
        token = "another"
    elif forgery == "no signature":
        headers.pop(TRACE_SIGNATURE_HEADER)
    elif forgery == "garbage":
        headers = {TRACEPARENT_HEADER: "x" * 1000, TRACE_SIGNATURE_HEADER: "y"}
    else:
        headers = None  # type: ignore[assignment]
    calls: list[Any] = []
    runtime = fake_runtime(calls)
    instrument_worker(runtime, headers=lambda: headers)
    outcome = runtime.handle({"token": token, "run_id": "r", "step": 3}, "castor.tool.fetch")
    assert outcome.status == "ok" and len(calls) == 1  # the task ran
    (span,) = exporter.get_finished_spans()
    assert span.parent is None  # a root span: nothing links to the coordinator's
    assert span.attributes["castor.trace_context"] in {"forged", "unsigned", "invalid", "absent"}
    assert span.attributes["castor.outcome"] == "ok"


def test_a_worker_span_is_the_child_of_a_signed_context(exporter: InMemorySpanExporter) -> None:
    with tracing.tracer().start_as_current_span("castor.syscall fetch") as parent:
        headers = tracing.outgoing("tok")
    runtime = fake_runtime([])
    instrument_worker(runtime, headers=lambda: headers)
    runtime.handle({"token": "tok"}, "castor.tool.made_up")
    span = exporter.get_finished_spans()[-1]
    assert span.name == "castor.task unknown"  # a task name no tool of the worker has
    assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
    assert span.context.trace_id == parent.get_span_context().trace_id


def echo(text: str) -> str:
    return text


async def test_a_span_per_live_syscall_and_none_for_a_replayed_step(exporter: InMemorySpanExporter) -> None:
    async def agent() -> list[Any]:
        return [await tool("echo", text="secret-arg"), await tool("echo", text=5)]

    kernel = Castor(tools=[echo], interceptors=[SyscallSpans()])
    cp = await kernel.run(agent)
    names = [(s.name, s.attributes["castor.step"], s.attributes["castor.outcome"])
             for s in exporter.get_finished_spans()]
    assert names == [("castor.syscall echo", 0, "ok"), ("castor.syscall echo", 1, "validation_error")]
    assert "secret-arg" not in repr([dict(s.attributes) for s in exporter.get_finished_spans()])  # no argument
    exporter.clear()
    await kernel.run(agent, checkpoint=cp.fork(at_step=2))
    assert exporter.get_finished_spans() == ()
