"""A replayed pydantic-ai run reports no span of a step served from the journal (``_pydantic_ai_replay``).

pydantic-ai's ``Instrumentation`` capability exports a span per model request (``chat <model>``), per tool
call (``execute_tool <name>``) and per run (``invoke_agent``), its tokens in the model request's. A resume
replays the loop: without a replay scope, every replayed request and tool call was exported again, and
its tokens counted twice by whatever reads the spans.

Streamed requests are not covered: pydantic-ai opens a stream's request in the task that reads it, not in
the task whose ``chat`` span stands for it, and a durable unit is credited to the spans of the task that
reports it; a replayed streamed request's span is reported again (``docs/frameworks.md``).
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("pydantic_ai")
pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic_ai import Agent
from pydantic_ai.capabilities.instrumentation import Instrumentation
from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.instrumented import InstrumentationSettings

from tests.frameworks.test_pydantic_ai import USAGE, Script, delete_file, kernel, main_of, scripted, search


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def instrumented(model: Any, spans: InMemorySpanExporter) -> Agent[None, str]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    settings = InstrumentationSettings(tracer_provider=provider)
    return Agent(model, tools=[search, delete_file], capabilities=[Instrumentation(settings=settings)])


def names(spans: InMemorySpanExporter) -> list[str]:
    found = [s.name for s in spans.get_finished_spans()]
    spans.clear()
    return found


async def test_a_resumed_run_reports_only_the_steps_it_ran(spans: InMemorySpanExporter) -> None:
    agent = instrumented(scripted(Script()), spans)
    k = kernel(agent)
    cp = await k.run(main_of(agent))
    assert cp.status == "SUSPENDED_FOR_HITL"
    assert names(spans) == ["chat scripted", "execute_tool search", "chat scripted", "execute_tool delete_file",
                            "invoke_agent agent"]
    await k.approve(cp)  # runs delete_file and journals it: the resume replays it too
    cp = await k.run(main_of(agent), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert names(spans) == ["chat scripted", "invoke_agent agent"]  # the last answer, the only live step


async def test_a_fork_reports_the_steps_after_the_fork_point(spans: InMemorySpanExporter) -> None:
    agent = instrumented(scripted(Script()), spans)
    k = kernel(agent)
    cp = await k.run(main_of(agent), speculative=True)
    assert cp.status == "COMPLETED" and len(names(spans)) == 6
    other = Script(
        ModelResponse(parts=[ToolCallPart("search", {"query": "old logs"}, tool_call_id="c1")], usage=USAGE),
        ModelResponse(parts=[TextPart("nothing to delete")], usage=USAGE),
    )
    forked_agent = instrumented(scripted(other), spans)
    forked = await k.run(main_of(forked_agent), checkpoint=cp.fork(at_step=2), speculative=True)
    assert forked.status == "COMPLETED" and forked.result == "nothing to delete"
    assert names(spans) == ["chat scripted", "invoke_agent agent"]  # steps 0 and 1 from the journal

