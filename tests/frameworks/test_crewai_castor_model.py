"""CrewAI's Castor-backed LLM (``CastorLLM``) under ``Crew.kickoff``'s real loop (text mode): its calls are
answered by the kernel's provider (``castor.llm.Scripted``), one model syscall each, so a destructive tool
suspends the crew, a resume replays the model steps without asking the provider again, and the tokens the
provider reports are charged. Streamed (``CastorLLM(stream=True)``), its text reaches CrewAI's event bus as the
provider writes it, and each call is still one journaled step. Runs where ``castor[crewai]`` is installed
(``.ci/run``: a venv of its own)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.frameworks.crewai_offline import offline

with offline():
    pytest.importorskip("crewai")
    from crewai import Agent, Crew, Task
    from crewai.events.event_bus import crewai_event_bus
    from crewai.events.types.llm_events import LLMStreamChunkEvent

from castor import Castor
from castor.frameworks.crewai import CastorLLM, kickoff, tools_of
from castor.llm import ModelResponse, Scripted
from tests.frameworks.test_crewai import act, delete_file, search  # the same tools and text-mode actions

pytestmark = [
    pytest.mark.crewai, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("crewai_offline"),
]
MODEL = "scripted-model"

SCRIPT = [act("search", '{"query": "old logs"}'), act("delete_file", '{"path": "/tmp/old"}'),
          "Thought: I now know the final answer\nFinal Answer: done"]


async def main(*, stream: bool = False, read: Callable[[str], None] | None = None) -> str:
    """The crew on ``CastorLLM``: ``stream``: the LLM streams; ``read``: the crew streams (``Crew(stream=True)``),
    its chunks' text going to ``read``."""
    agent = Agent(role="janitor", goal="clean", backstory="tidy", llm=CastorLLM(model=MODEL, stream=stream),
                  tools=[search, delete_file], max_iter=5)
    crew = Crew(agents=[agent], tasks=[Task(description="clean up old logs", expected_output="a word", agent=agent)],
                stream=read is not None)
    return str(await kickoff(crew, on_chunk=None if read is None else lambda event: read(event.chunk)))


async def streamed_main() -> str:
    return await main(stream=True)


def kernel(llm: Scripted, **options: Any) -> Castor:
    return Castor(tools=tools_of([search, delete_file]), destructive=["delete_file"], llm=llm, **options)


async def test_the_crew_suspends_then_resumes_without_asking_the_provider_again() -> None:
    llm = Scripted(SCRIPT, model=MODEL)
    k = kernel(llm)
    cp = await k.run(main)
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"
    assert [r.tool_name for r in cp.syscall_log] == [f"model:{MODEL}", "search", f"model:{MODEL}"]
    assert len(llm.calls) == 2
    assert any("found old logs" in m["content"] for m in llm.calls[1]["messages"])
    assert llm.calls[0]["stop"]  # CrewAI's stop words went to the provider with the request
    await k.approve(cp)
    cp = await k.run(main, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done" and len(llm.calls) == 3


async def test_the_crews_model_calls_charge_the_tokens_the_provider_reports() -> None:
    llm = Scripted(SCRIPT, model=MODEL)
    cp = await kernel(llm, budgets={"tokens": 100_000}).run(main, speculative=True)
    assert cp.status == "COMPLETED"
    used = [r.response["usage"] for r in cp.syscall_log if r.tool_name.startswith("model:")]
    assert len(used) == 3 and all(u["input_tokens"] > 0 for u in used)
    assert cp.capabilities["tokens"].current_usage == sum(u["input_tokens"] + u["output_tokens"] for u in used)


class Streaming(Scripted):
    """A scripted provider that streams its replies word by word and counts the calls it streamed; ``gated``:
    after each word it waits until the crew has read it (``gate``), so words read only at the end hang it."""

    def __init__(self, script: list[Any], *, gated: bool = False) -> None:
        super().__init__(script, model=MODEL)
        self.gated = gated
        self.gate = asyncio.Event()
        self.streamed = 0

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[str | ModelResponse]:
        self.streamed += 1
        async for item in super().stream(request):
            yield item
            if self.gated and isinstance(item, str):
                await self.gate.wait()
                self.gate.clear()


@contextmanager
def chunks_read(then: Callable[[], None] = lambda: None) -> Iterator[list[str]]:
    """The text of every ``LLMStreamChunkEvent`` CrewAI's bus delivers meanwhile (``then`` after each)."""
    seen: list[str] = []

    def on_chunk(_source: Any, event: LLMStreamChunkEvent) -> None:
        seen.append(event.chunk)
        then()

    with crewai_event_bus.scoped_handlers():
        crewai_event_bus.register_handler(LLMStreamChunkEvent, on_chunk)
        yield seen


def words(text: str) -> list[str]:
    first, *rest = text.split(" ")
    return [first, *(" " + word for word in rest)]


async def test_a_streamed_call_hands_crewai_each_chunk_as_the_provider_writes_it() -> None:
    script = [SCRIPT[0], SCRIPT[2]]
    llm = Streaming(script, gated=True)
    loop = asyncio.get_running_loop()
    with chunks_read(lambda: loop.call_soon_threadsafe(llm.gate.set)) as seen:
        async with asyncio.timeout(20):  # a chunk held back until the call ends would hang the provider
            cp = await kernel(llm).run(streamed_main)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert seen == words(script[0]) + words(script[1])
    # each streamed call is one journaled model step holding its whole text
    assert [r.tool_name for r in cp.syscall_log] == [f"model:{MODEL}", "search", f"model:{MODEL}"]
    assert [cp.syscall_log[i].response["text"] for i in (0, 2)] == script
    assert llm.streamed == 2 and len(llm.calls) == 2 and llm.calls[0]["stop"]


async def test_a_resumed_streamed_crew_replays_its_steps_without_the_provider() -> None:
    llm = Streaming(SCRIPT)
    k = kernel(llm)
    with chunks_read() as seen:
        cp = await k.run(streamed_main)
    assert cp.status == "SUSPENDED_FOR_HITL" and llm.streamed == 2 and seen == words(SCRIPT[0]) + words(SCRIPT[1])
    await k.approve(cp)
    with chunks_read() as seen:
        cp = await k.run(streamed_main, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert llm.streamed == 3 and len(llm.calls) == 3  # steps 0 and 2 came from the journal
    assert seen == [SCRIPT[0], SCRIPT[1], *words(SCRIPT[2])]  # a replayed step: its journaled text, whole


async def test_a_crew_journaled_streamed_resumes_whole_and_the_other_way_round() -> None:
    llm = Streaming(SCRIPT)
    k = kernel(llm)
    cp = await k.run(streamed_main)
    await k.approve(cp)
    cp = await k.run(main, checkpoint=cp)  # the same requests: the steps replay
    assert cp.status == "COMPLETED" and llm.streamed == 2 and len(llm.calls) == 3
    llm = Streaming(SCRIPT)
    k = kernel(llm)
    cp = await k.run(main)
    await k.approve(cp)
    cp = await k.run(streamed_main, checkpoint=cp)
    assert cp.status == "COMPLETED" and llm.streamed == 1 and len(llm.calls) == 3


async def test_streaming_crews_run_side_by_side_each_reading_its_own_chunks() -> None:
    scripts = [[SCRIPT[0], SCRIPT[2]], [SCRIPT[2]]]
    seen: list[list[str]] = [[], []]

    async def crew(n: int) -> Any:
        async def agent() -> str:
            return await main(read=seen[n].append)  # Crew(stream=True): the CastorLLM streams

        return await kernel(Streaming(scripts[n])).run(agent)

    done = await asyncio.gather(crew(0), crew(1))
    assert [cp.status for cp in done] == ["COMPLETED", "COMPLETED"]
    assert seen == [words(SCRIPT[0]) + words(SCRIPT[2]), words(SCRIPT[2])]
