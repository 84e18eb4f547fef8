"""CrewAI's Castor-backed LLM (``CastorLLM``) under ``Crew.kickoff``'s real loop (text mode): its calls are
answered by the kernel's provider (``castor.llm.Scripted``), one model syscall each, so a destructive tool
suspends the crew, a resume replays the model steps without asking the provider again, and the tokens the
provider reports are charged. Streamed (``CastorLLM(stream=True)``), its text reaches CrewAI's event bus as the
provider writes it, and each call is still one journaled step. Structured output (a task's ``output_pydantic``,
a planning crew's ``planning_llm``) is asked as the request's ``response_format`` and answered as the model's
instance, rebuilt from the journal on replay. Runs where ``castor[crewai]`` is installed
(``.ci/run``: a venv of its own)."""

from __future__ import annotations

import asyncio
import json
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
    from crewai.utilities.planning_handler import PlannerTaskPydanticOutput

from castor import Castor
from castor.errors import ReplayDivergenceError
from castor.frameworks._common import in_thread
from castor.frameworks.crewai import CastorLLM, akickoff, kickoff, tools_of
from castor.lib import tool
from castor.llm import ModelResponse, Scripted
from tests.frameworks.test_crewai import act, delete_file, final, search  # the same tools and text-mode actions
from tests.frameworks.test_crewai_crews import FIELDS, PLAN, Report, Tally  # the guarded LLM's structured cases

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


# --- structured output --------------------------------------------------------------------------------


def schema_format(model: type[Any]) -> dict[str, Any]:
    """The ``response_format`` a structured call asks of the provider."""
    return {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": model.model_json_schema(),
                                                   "strict": False}}


def reporting(*, entry: str = "kickoff", model: type[Any] = Report, stream: bool = False) -> Callable[[], Any]:
    """The agent function: a reporter's ``output_pydantic`` task (an agent without tools: CrewAI asks its LLM
    for the model), then the janitor's, which suspends on delete_file; it returns the report's kind and
    fields."""
    async def agent() -> dict[str, Any]:
        writer = Agent(role="reporter", goal="report", backstory="counts", llm=CastorLLM(model=MODEL, stream=stream),
                       max_iter=3)
        janitor = Agent(role="janitor", goal="clean", backstory="tidy", llm=CastorLLM(model=MODEL, stream=stream),
                        tools=[search, delete_file], max_iter=5)
        crew = Crew(agents=[writer, janitor], tasks=[
            Task(description="count the old logs", expected_output="a report", agent=writer, output_pydantic=model),
            Task(description="clean up old logs", expected_output="a word", agent=janitor)])
        done = await (kickoff(crew) if entry == "kickoff" else akickoff(crew))
        report = done.tasks_output[0].pydantic
        return {"kind": type(report).__name__, "value": dict(report or {})}

    return agent


@pytest.mark.parametrize(("entry", "stream"), [("kickoff", False), ("akickoff", False), ("kickoff", True)])
async def test_a_structured_task_gets_the_models_instance_and_a_resume_replays_it(entry: str, stream: bool) -> None:
    llm = Streaming([json.dumps(FIELDS), *SCRIPT])
    k = kernel(llm)
    cp = await k.run(reporting(entry=entry, stream=stream))
    assert cp.status == "SUSPENDED_FOR_HITL" and len(llm.calls) == 3
    assert llm.calls[0]["response_format"] == schema_format(Report)  # the provider was asked for the schema
    assert "response_format" not in llm.calls[1]  # the janitor's call: text
    assert cp.syscall_log[0].arguments["request"]["response_format"] == schema_format(Report)
    assert llm.streamed == (3 if stream else 0)
    await k.approve(cp)
    cp = await k.run(reporting(entry=entry, stream=stream), checkpoint=cp)
    assert cp.status == "COMPLETED" and len(llm.calls) == 4  # the report came from the journal
    assert cp.result == {"kind": "Report", "value": FIELDS}


@pytest.mark.parametrize("stream", [False, True])
async def test_call_and_acall_return_the_models_instance_rebuilt_from_the_journal_on_resume(stream: bool) -> None:
    llm = Streaming([json.dumps(FIELDS), json.dumps({"files": 1})])
    asked = [{"role": "user", "content": "count the old logs"}]

    async def agent() -> list[Any]:
        castor_llm = CastorLLM(model=MODEL, stream=stream)
        report = await in_thread(castor_llm.call, asked, response_model=Report)  # as from the crew's thread
        tally = await castor_llm.acall(asked, response_model=Tally)
        await tool("delete_file", path="/tmp/old")  # suspends the run for a human
        return [type(report).__name__, dict(report), type(tally).__name__, dict(tally)]

    k = kernel(llm)
    cp = await k.run(agent)
    assert cp.status == "SUSPENDED_FOR_HITL" and len(llm.calls) == 2
    assert [c["response_format"] for c in llm.calls] == [schema_format(Report), schema_format(Tally)]
    await k.approve(cp)
    cp = await k.run(agent, checkpoint=cp)
    assert cp.status == "COMPLETED" and len(llm.calls) == 2  # both answers came from the journal
    assert cp.result == ["Report", FIELDS, "Tally", {"files": 1}]


async def test_a_fork_after_a_structured_step_rebuilds_the_instance_without_the_provider() -> None:
    cp = await kernel(Scripted([json.dumps(FIELDS), *SCRIPT], model=MODEL)).run(reporting(), speculative=True)
    assert cp.status == "COMPLETED" and cp.result == {"kind": "Report", "value": FIELDS}
    llm = Scripted([SCRIPT[0], final("nothing to delete")], model=MODEL)
    forked = await kernel(llm).run(reporting(), checkpoint=cp.fork(at_step=1), speculative=True)
    assert forked.status == "COMPLETED" and forked.result == {"kind": "Report", "value": FIELDS}
    assert forked.syscall_log[0] == cp.syscall_log[0]
    assert len(llm.calls) == 2 and all("response_format" not in c for c in llm.calls)


async def test_another_schema_at_a_journaled_structured_step_diverges() -> None:
    llm = Scripted([json.dumps(FIELDS)], model=MODEL)

    def asking(model: type[Any]) -> Callable[[], Any]:
        async def agent() -> str:
            await CastorLLM(model=MODEL).acall("count the old logs", response_model=model)  # the same messages
            await tool("delete_file", path="/tmp/old")
            return "done"

        return agent

    k = kernel(llm)
    cp = await k.run(asking(Report))
    assert cp.status == "SUSPENDED_FOR_HITL"
    await k.approve(cp)
    with pytest.raises(ReplayDivergenceError):
        await k.run(asking(Tally), checkpoint=cp)
    assert len(llm.calls) == 1


async def test_a_structured_answer_that_is_not_the_models_json_goes_back_as_text_for_crewais_converter() -> None:
    # the model answers the task in prose: CrewAI reads it as the final answer and its converter asks again
    llm = Scripted([final("three old log files"), json.dumps(FIELDS), *SCRIPT], model=MODEL)
    k = kernel(llm)
    cp = await k.run(reporting())
    assert cp.status == "SUSPENDED_FOR_HITL" and len(llm.calls) == 4
    assert llm.calls[0]["response_format"] == schema_format(Report)
    assert "response_format" not in llm.calls[1]  # the converter's call: CastorLLM is in text mode
    assert "three old log files" in json.dumps(llm.calls[1]["messages"])
    await k.approve(cp)
    cp = await k.run(reporting(), checkpoint=cp)
    assert cp.status == "COMPLETED" and len(llm.calls) == 5
    assert cp.result == {"kind": "Report", "value": FIELDS}


async def test_a_planning_crew_plans_on_castor_llm_and_a_resume_replays_the_plan() -> None:
    llm = Scripted([json.dumps(PLAN), *SCRIPT], model=MODEL)

    async def agent() -> str:
        janitor = Agent(role="janitor", goal="clean", backstory="tidy", llm=CastorLLM(model=MODEL),
                        tools=[search, delete_file], max_iter=5)
        crew = Crew(agents=[janitor], tasks=[Task(description="clean up old logs", expected_output="a word",
                                                  agent=janitor)],
                    planning=True, planning_llm=CastorLLM(model=MODEL))
        return str(await kickoff(crew))

    k = kernel(llm)
    cp = await k.run(agent)
    assert cp.status == "SUSPENDED_FOR_HITL" and len(llm.calls) == 3
    assert llm.calls[0]["response_format"] == schema_format(PlannerTaskPydanticOutput)
    assert "Search, then delete." in json.dumps(llm.calls[1]["messages"])  # the plan, in the janitor's task
    await k.approve(cp)
    cp = await k.run(agent, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done" and len(llm.calls) == 4
    assert "Search, then delete." in json.dumps(llm.calls[3]["messages"])
