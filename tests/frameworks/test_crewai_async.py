"""A CrewAI crew under CrewAI's native async path: ``castor.frameworks.crewai.akickoff(crew)`` and a guarded
crew's own ``await crew.akickoff()`` (CrewAI 1.15 runs each step of its agents in a thread of the loop's
default executor, where the guarded LLM's ``call`` and tools' ``_run`` are answered on the run's loop),
``crew.kickoff_async()`` (CrewAI's sync kickoff in ``asyncio.to_thread``), the guarded LLM's ``acall`` (CrewAI
awaits it for its context-window summaries, on a loop of its own) and ``CastorLLM.acall``; and the charge of a
guarded LLM's stream that fails part way. Runs where ``castor[crewai]`` is installed (``.ci/run``)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.frameworks.crewai_offline import offline

with offline():
    pytest.importorskip("crewai")
    from crewai import Agent, Crew, Task
    from crewai.events.types.llm_events import LLMCallType
    from crewai.llms.base_llm import llm_call_context
    from crewai.tools import BaseTool

from pydantic import BaseModel, Field

from castor import Castor
from castor.errors import UnsupportedError
from castor.frameworks.crewai import CastorLLM, akickoff, guard, kickoff, tools_of
from castor.llm import ModelRefusedError
from castor.llm import Scripted as ScriptedProvider
from tests.frameworks.test_crewai import DEFAULT, Scripted, act, delete_file, final, kernel, scripted, search, words

pytestmark = [
    pytest.mark.crewai, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("crewai_offline"),
]


def crew_of(llm: Any, prompt: str = "clean up old logs", stream: bool = False) -> Crew:
    agent = Agent(role="janitor", goal="clean", backstory="tidy", llm=llm, tools=[search, delete_file], max_iter=5)
    return Crew(agents=[agent], tasks=[Task(description=prompt, expected_output="a word", agent=agent)],
                stream=stream)


def native(llm: Any, prompt: str = "clean up old logs", read: Any = None) -> Any:
    """The agent function: ``akickoff(crew)``; ``read``: the crew streams, its chunks' text go to ``read``."""
    async def main() -> str:
        crew = crew_of(llm, prompt, stream=read is not None)
        return str(await akickoff(crew, on_chunk=None if read is None else lambda event: read(event.chunk)))

    return main


def own(llm: Any, entry: str = "akickoff") -> Any:
    """The agent function: the crew guarded inside the run, then CrewAI's own ``akickoff`` or ``kickoff_async``."""
    async def main() -> str:
        crew = guard(crew_of(llm))
        return str(await getattr(crew, entry)())

    return main


async def test_a_destructive_tool_suspends_the_crew_under_akickoff() -> None:
    llm = scripted()
    cp = await kernel().run(native(llm))
    assert cp.status == "SUSPENDED_FOR_HITL"
    assert (cp.pending_step, cp.pending_tool) == (3, "delete_file")
    assert [r.tool_name for r in cp.syscall_log] == ["model:scripted", "search", "model:scripted"]
    assert len(llm.asked) == 2  # the suspension did not go back to the model as a tool error


@pytest.mark.parametrize("entry", ["akickoff", "kickoff_async"])
async def test_a_crew_guarded_in_the_run_runs_under_crewais_own_async_entry_points(entry: str) -> None:
    llm = scripted()
    k = kernel()
    cp = await k.run(own(llm, entry))
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"
    await k.approve(cp)
    cp = await k.run(own(llm, entry), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert len(llm.asked) == 3  # steps 0 and 2 came from the journal
    assert [r.tool_name for r in cp.syscall_log] == ["model:scripted", "search", "model:scripted", "delete_file",
                                                     "model:scripted"]


async def test_a_crew_guarded_outside_the_run_is_refused_naming_akickoff() -> None:
    crew = guard(crew_of(scripted()))  # no run, no loop: nothing to answer its calls under crew.akickoff()

    async def main() -> str:
        return str(await crew.akickoff())

    with pytest.raises(UnsupportedError, match=r"no Castor run's loop .*`await castor.frameworks.crewai.akickoff"):
        await kernel().run(main)


@pytest.mark.parametrize(("decision", "status"), [("reject", "HITL_REJECTED"), ("modify", "HITL_MODIFIED")])
async def test_reject_and_modify_reach_the_model_under_akickoff(decision: str, status: str) -> None:
    llm = scripted()
    k = kernel()
    cp = await k.run(native(llm))
    getattr(k, decision)(cp, "not that file")
    cp = await k.run(native(llm), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    observed = llm.asked[-1][-2]["content"]  # the assistant's action and its observation
    assert f"Observation: {{'status': '{status}'" in observed and "not that file" in observed


async def test_fork_under_akickoff_replays_the_model_calls_before_the_fork_point() -> None:
    llm = scripted()
    k = kernel()
    cp = await k.run(native(llm), speculative=True)
    assert cp.status == "COMPLETED" and len(llm.asked) == 3
    later = scripted(DEFAULT[0], final("nothing to delete"))
    forked = await k.run(native(later), checkpoint=cp.fork(at_step=2), speculative=True)
    assert forked.status == "COMPLETED" and forked.result == "nothing to delete"
    assert len(later.asked) == 1  # steps 0-1 from the journal; the model answered step 2 only
    assert forked.syscall_log[:2] == cp.syscall_log[:2] and len(forked.syscall_log) == 3


async def test_a_model_call_the_budget_cannot_cover_fails_the_run_under_akickoff() -> None:
    llm = scripted()
    with pytest.raises(ModelRefusedError, match="tokens"):  # not retried by CrewAI's task retries
        await kernel(budgets={"tokens": 10}).run(native(llm))
    assert llm.asked == []


# --- streaming ----------------------------------------------------------------------------------------


async def test_a_streaming_crew_under_akickoff_reads_the_chunks_and_suspends() -> None:
    llm = scripted()
    k = kernel()
    seen: list[str] = []
    cp = await k.run(native(llm, read=seen.append))
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"
    assert llm.streamed == 2 and seen == words(DEFAULT[0]) + words(DEFAULT[1])
    await k.approve(cp)
    seen.clear()
    cp = await k.run(native(llm, read=seen.append), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert len(llm.asked) == 3 and llm.streamed == 3
    assert seen == [DEFAULT[0], DEFAULT[1], *words(DEFAULT[2])]  # a replayed step: its journaled text, whole


async def test_crewais_own_streaming_output_under_akickoff_reaches_its_reader_and_suspends() -> None:
    llm = scripted()
    k = kernel()
    seen: list[str] = []

    async def main() -> str:
        crew = guard(crew_of(llm, stream=True))
        streaming = await crew.akickoff()  # CrewAI's CrewStreamingOutput
        async for chunk in streaming:
            seen.append(chunk.content)
        return str(streaming.result)

    cp = await k.run(main)
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"  # through CrewAI's reader
    assert seen == words(DEFAULT[0]) + words(DEFAULT[1])
    await k.approve(cp)
    seen.clear()
    cp = await k.run(main, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done" and len(llm.asked) == 3
    assert seen == [DEFAULT[0], DEFAULT[1], *words(DEFAULT[2])]


class Cut(Scripted):
    """Streams its answer word by word and fails after ``cut_after`` words (``acall``: its own async path)."""

    cut_after: int = 2
    own_async: bool = False

    def call(self, messages: Any, *args: Any, from_task: Any = None, from_agent: Any = None, **kwargs: Any) -> str:
        self.asked.append(list(messages))
        with llm_call_context():
            for word in words(DEFAULT[0])[:self.cut_after]:
                self._emit_stream_chunk_event(chunk=word, from_task=from_task, from_agent=from_agent,
                                              call_type=LLMCallType.LLM_CALL)
        raise ConnectionError("stream cut")


class AsyncCut(Cut):
    async def acall(self, messages: Any, *args: Any, **kwargs: Any) -> str:
        return self.call(messages, *args, **kwargs)


@pytest.mark.parametrize("how", ["kickoff", "akickoff", "acall", "own acall"])
async def test_a_guarded_stream_cut_part_way_is_charged_what_it_received(how: str) -> None:
    llm = (AsyncCut if how == "own acall" else Cut)(model="scripted", stream=True)

    async def main() -> str:
        if how.endswith("acall"):
            return str(await guard(llm).acall([{"role": "user", "content": "clean up"}]))
        crew = crew_of(llm)
        return str(await (kickoff if how == "kickoff" else akickoff)(crew))

    k = kernel(budgets={"tokens": 10_000})
    with pytest.raises(ConnectionError, match="stream cut"):
        await k.run(main, pid="cut")
    cp = k.load("cut")
    assert cp.status == "FAILED" and cp.partial_work == "Thought: next\nAction:"
    # CrewAI may retry the task: each failed call is kept and charged; those it went past are journaled as
    # failed steps (a replay raises their error again), the last one, which ended the run, is not.
    assert len(cp.syscall_log) == len(cp.failures) - 1
    assert all(r.tool_name == "model:scripted" and r.failure is not None for r in cp.syscall_log)
    failure = cp.failures[0]
    assert failure.tool_name == "model:scripted" and "partial text: 'Thought: next\\nAction:'" in failure.message
    assert failure.charged["input_tokens"] > 0 and failure.charged["output_tokens"] > 0
    assert cp.capabilities["tokens"].current_usage == sum(f.charged["tokens"] for f in cp.failures)


# --- acall ----------------------------------------------------------------------------------------------


class AsyncScripted(Scripted):
    """A scripted LLM with an ``acall`` of its own, which records the calls it answered and their thread."""

    acalled: list[str] = Field(default_factory=list)

    async def acall(self, messages: Any, *args: Any, **kwargs: Any) -> str:
        self.acalled.append(threading.current_thread().name)
        return self.call(messages, *args, **kwargs)


MESSAGES = [{"role": "user", "content": "clean up old logs"}]


def acalling(llm: Scripted, loop_thread: list[str]) -> Any:
    """The agent function: two ``acall``s of ``guard(llm)``, on the run's loop, then as CrewAI awaits one for a
    context-window summary (on a loop of its own, ``asyncio.run`` in another thread)."""
    async def main() -> str:
        loop_thread.append(threading.current_thread().name)
        guarded = guard(llm)
        first = await guarded.acall(MESSAGES)
        then = [*MESSAGES, {"role": "assistant", "content": first}, {"role": "user", "content": "go on"}]
        return str(await asyncio.to_thread(asyncio.run, guarded.acall(then)))

    return main


@pytest.mark.parametrize("wrapped", [AsyncScripted, Scripted])
async def test_acall_is_a_journaled_step_on_the_runs_loop(wrapped: type[Scripted]) -> None:
    llm = wrapped(model="scripted", answers=DEFAULT)
    loop_thread: list[str] = []
    k = kernel()
    cp = await k.run(acalling(llm, loop_thread), speculative=True)
    assert cp.status == "COMPLETED" and cp.result == DEFAULT[1]
    assert [r.tool_name for r in cp.syscall_log] == ["model:scripted"] * 2 and len(llm.asked) == 2
    if wrapped is AsyncScripted:  # its own acall, awaited on the run's loop both times
        assert llm.acalled == loop_thread * 2
    again = wrapped(model="scripted", answers=DEFAULT)
    replayed = await k.run(acalling(again, []), checkpoint=cp.fork(at_step=2), speculative=True)
    assert replayed.status == "COMPLETED" and replayed.result == DEFAULT[1]
    assert again.asked == []  # both steps from the journal


async def test_acall_of_a_crews_context_window_summary_is_a_journaled_step() -> None:
    llm = Summarizing(model="scripted")
    k = kernel()
    cp = await k.run(native(llm), speculative=True)
    assert cp.status == "COMPLETED" and cp.result == "done"
    names = [r.tool_name for r in cp.syscall_log]
    assert names == ["model:scripted", "search", "model:scripted", "model:scripted"]
    summary = cp.syscall_log[2].arguments["request"]["messages"][0]["content"]
    assert "summaries of agent conversations" in summary and llm.acalled  # asked through its acall
    again = Summarizing(model="scripted")
    forked = await k.run(native(again), checkpoint=cp.fork(at_step=3), speculative=True)
    assert forked.status == "COMPLETED" and len(again.asked) == 1  # the summary came from the journal


class Summarizing(AsyncScripted):
    """A small context window: CrewAI summarizes the conversation once the search result is in it (through
    ``acall``); then answers by what the conversation holds."""

    def call(self, messages: Any, *args: Any, **kwargs: Any) -> str:
        self.asked.append(list(messages))
        text = " ".join(str(m.get("content")) for m in messages)
        if "summaries of agent conversations" in text:
            return "<summary>searched the logs: found old logs</summary>"
        return final("done") if "found old logs" in text else act("search", '{"query": "old logs"}')

    def get_context_window_size(self) -> int:
        return 420  # more than the first request, less than the second (with the search's observation)


@pytest.mark.parametrize("stream", [False, True])
async def test_castor_llm_acall_is_the_providers_step(stream: bool) -> None:
    provider = ScriptedProvider([{"text": "one two"}, {"text": "three"}], model="scripted-model")
    llm = CastorLLM(model="scripted-model", stream=stream)

    async def main() -> str:
        first = await llm.acall(MESSAGES)
        second = await asyncio.to_thread(asyncio.run, llm.acall([*MESSAGES, {"role": "assistant", "content": first}]))
        return f"{first}|{second}"

    k = Castor(tools=tools_of([search]), llm=provider)
    cp = await k.run(main, speculative=True)
    assert cp.status == "COMPLETED" and cp.result == "one two|three" and len(provider.calls) == 2
    assert [r.tool_name for r in cp.syscall_log] == ["model:scripted-model"] * 2
    replayed = await k.run(main, checkpoint=cp.fork(at_step=2), speculative=True)
    assert replayed.result == "one two|three" and len(provider.calls) == 2  # from the journal


async def test_an_error_that_ends_the_run_passes_crewais_except_exception_around_acall() -> None:
    llm = AsyncScripted(model="scripted", answers=DEFAULT)

    async def main() -> str:
        try:  # as CrewAI's context-window summary does: a failed summary is logged and the call goes on
            return str(await guard(llm).acall(MESSAGES))
        except Exception:
            return "swallowed"

    with pytest.raises(ModelRefusedError, match="tokens"):
        await kernel(budgets={"tokens": 10}).run(main)
    assert llm.asked == []


async def test_a_guarded_tools_arun_is_a_syscall_on_the_runs_loop_and_suspends() -> None:
    found, deleting = guard([search, delete_file])

    async def main() -> str:
        first = await found.arun(query="old logs")  # on the run's loop
        return str(await asyncio.to_thread(asyncio.run, deleting.arun(path=str(first))))  # on a loop of its own

    k = kernel()
    cp = await k.run(main)
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"
    assert [(r.tool_name, r.response) for r in cp.syscall_log] == [("search", "found old logs")]
    await k.approve(cp)
    cp = await k.run(main, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "deleted found old logs"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_crew_on_castor_llm_suspends_and_resumes_under_akickoff(stream: bool) -> None:
    provider = ScriptedProvider([{"text": answer} for answer in DEFAULT], model="scripted-model")
    k = Castor(tools=tools_of([search, delete_file]), destructive=["delete_file"], llm=provider)
    main = native(CastorLLM(model="scripted-model", stream=stream))
    cp = await k.run(main)
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file" and len(provider.calls) == 2
    await k.approve(cp)
    cp = await k.run(main, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done" and len(provider.calls) == 3


class _LookupArguments(BaseModel):
    query: str


class Lookup(BaseTool):
    """A tool of its own class (no function of its own to register): Castor runs its ``run``."""

    name: str = "lookup"
    description: str = "Look something up."
    args_schema: type[BaseModel] = _LookupArguments

    def _run(self, query: str) -> str:
        return f"looked up {query}"


async def test_more_crews_than_the_loops_default_executor_has_threads_all_finish() -> None:
    """Under ``akickoff`` each crew's steps hold a thread of the loop's default executor; a tool of its own
    class must not need another one from that executor to run, or the crews wait for each other for ever."""
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(2))
    k = Castor(tools=tools_of([Lookup()]))

    async def main() -> str:
        llm = scripted(act("lookup", '{"query": "old logs"}'), final("done"))
        agent = Agent(role="janitor", goal="clean", backstory="tidy", llm=llm, tools=[Lookup()], max_iter=5)
        crew = Crew(agents=[agent], tasks=[Task(description="look", expected_output="a word", agent=agent)])
        return str(await akickoff(crew))

    done = await asyncio.wait_for(asyncio.gather(*(k.run(main) for _ in range(3))), 30)
    assert [cp.status for cp in done] == ["COMPLETED"] * 3
    assert all(cp.syscall_log[1].response == "looked up old logs" for cp in done)
