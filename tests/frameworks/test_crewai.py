"""A CrewAI crew under Castor: ``Crew.kickoff``'s real loop (text mode) with a scripted LLM.

CrewAI is not in the ``dev`` extra (it pins ``openai<3``, the OpenAI Agents SDK needs ``openai>=3``; see
``castor/frameworks/crewai.py``): these tests run where ``castor[crewai]`` is installed (``.ci/run``: a
venv of its own). The scripted LLM answers by the conversation (the n-th answer after n assistant messages) and
records every call, so a model call Castor should have served from the journal shows up in the counts. Asked
to stream (``Crew(stream=True)`` sets it on the agent's LLM, the guarded one), it emits its answer word by word as
``LLMStreamChunkEvent``s, as CrewAI's own LLMs do.
"""

from __future__ import annotations

import asyncio
import io
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from tests.frameworks.crewai_offline import offline

with offline():
    pytest.importorskip("crewai")
    from crewai import Agent, Crew, Task
    from crewai.events.types.llm_events import LLMCallType
    from crewai.llms.base_llm import BaseLLM, llm_call_context
    from crewai.tools import tool

from pydantic import Field

from castor import Castor
from castor.errors import ReplayDivergenceError
from castor.frameworks._common import UnsupportedToolError
from castor.frameworks._crewai_llm import MessageParts
from castor.frameworks.crewai import guard, kickoff, tools_of
from castor.llm import ModelRefusedError

# CrewAI's own code reads its deprecated fields (function_calling_llm, ...) when an Agent or a Crew is built.
pytestmark = [
    pytest.mark.crewai, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("crewai_offline"),
]



@tool("search")
def search(query: str) -> str:
    """Search the logs."""
    return f"found {query}"


@tool("delete_file")
def delete_file(path: str) -> str:
    """Delete a file."""
    return f"deleted {path}"


def act(name: str, arguments: str) -> str:
    return f"Thought: next\nAction: {name}\nAction Input: {arguments}"


def final(answer: str) -> str:
    return f"Thought: I now know the final answer\nFinal Answer: {answer}"


DEFAULT = (act("search", '{"query": "old logs"}'), act("delete_file", '{"path": "/tmp/old"}'), final("done"))


class Scripted(BaseLLM):
    """The n-th answer after n assistant messages; records every call."""

    answers: tuple[str, ...] = DEFAULT
    asked: list[Any] = Field(default_factory=list)
    stops: list[list[str]] = Field(default_factory=list)  # the stop words of each call
    streamed: int = 0

    def call(self, messages: Any, *args: Any, from_task: Any = None, from_agent: Any = None, **kwargs: Any) -> str:
        self.asked.append(list(messages))
        self.stops.append(list(self.stop_sequences))
        answer = self.answers[sum(1 for m in messages if m.get("role") == "assistant")]
        if self._effective_stream():
            self.streamed += 1
            with llm_call_context():  # a call's chunk events name it, as CrewAI's own LLMs' do
                for word in words(answer):
                    self._emit_stream_chunk_event(chunk=word, from_task=from_task, from_agent=from_agent,
                                                  call_type=LLMCallType.LLM_CALL)
        return answer

    def supports_function_calling(self) -> bool:
        return False


def words(text: str) -> list[str]:
    first, *rest = text.split(" ")
    return [first, *(" " + word for word in rest)]


def scripted(*answers: str) -> Scripted:
    return Scripted(model="scripted", answers=answers or DEFAULT)


def main_of(llm: BaseLLM, prompt: str = "clean up old logs", read: Any = None) -> Any:
    """The agent function; ``read``: the crew streams (``Crew(stream=True)``), its chunks' text go to ``read``."""
    async def main() -> str:
        agent = Agent(role="janitor", goal="clean", backstory="tidy", llm=llm, tools=[search, delete_file],
                      max_iter=5)
        crew = Crew(agents=[agent], tasks=[Task(description=prompt, expected_output="a word", agent=agent)],
                    stream=read is not None)
        return str(await kickoff(crew, on_chunk=None if read is None else lambda event: read(event.chunk)))

    return main


def kernel(**options: Any) -> Castor:
    return Castor(tools=tools_of([search, delete_file]), destructive=["delete_file"], **options)


async def test_a_destructive_tool_suspends_the_crew_through_its_tool_error_handling() -> None:
    llm = scripted()
    cp = await kernel().run(main_of(llm))
    assert cp.status == "SUSPENDED_FOR_HITL"
    assert (cp.pending_step, cp.pending_tool) == (3, "delete_file")
    assert [r.tool_name for r in cp.syscall_log] == ["model:scripted", "search", "model:scripted"]
    assert len(llm.asked) == 2  # the suspension did not go back to the model as a tool error


async def test_approve_then_resume_calls_the_model_once_per_step() -> None:
    llm = scripted()
    k = kernel()
    cp = await k.run(main_of(llm))
    await k.approve(cp)
    cp = await k.run(main_of(llm), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert len(llm.asked) == 3
    assert cp.syscall_log[3].response == "deleted /tmp/old"


@pytest.mark.parametrize(("decision", "status"), [("reject", "HITL_REJECTED"), ("modify", "HITL_MODIFIED")])
async def test_reject_and_modify_reach_the_model_as_the_observation(decision: str, status: str) -> None:
    llm = scripted()
    k = kernel()
    cp = await k.run(main_of(llm))
    getattr(k, decision)(cp, "not that file")
    cp = await k.run(main_of(llm), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    observed = llm.asked[-1][-2]["content"]  # the assistant's action and its observation
    assert f"Observation: {{'status': '{status}'" in observed and "not that file" in observed


async def test_fork_replays_the_model_calls_before_the_fork_point() -> None:
    llm = scripted()
    k = kernel()
    cp = await k.run(main_of(llm), speculative=True)
    assert cp.status == "COMPLETED" and len(llm.asked) == 3
    later = scripted(DEFAULT[0], final("nothing to delete"))
    forked = await k.run(main_of(later), checkpoint=cp.fork(at_step=2), speculative=True)
    assert forked.status == "COMPLETED" and forked.result == "nothing to delete"
    assert len(later.asked) == 1  # steps 0-1 from the journal; the model answered step 2 only
    assert forked.syscall_log[:2] == cp.syscall_log[:2] and len(forked.syscall_log) == 3


async def test_tools_charge_api_and_model_calls_tokens() -> None:
    cp = await kernel(budgets={"api": 10, "tokens": 100_000}).run(main_of(scripted()), speculative=True)
    assert cp.status == "COMPLETED"
    charged = [r.charged for r in cp.syscall_log]
    assert [sorted(c) for c in charged] == [["input_tokens", "output_tokens", "tokens"], ["api"]] * 2 + [
        ["input_tokens", "output_tokens", "tokens"]]
    assert cp.capabilities["tokens"].current_usage == sum(c.get("tokens", 0) for c in charged) > 0


async def test_a_model_call_the_budget_cannot_cover_is_refused_before_the_model() -> None:
    llm = scripted()
    with pytest.raises(ModelRefusedError, match="tokens"):
        await kernel(budgets={"tokens": 10}).run(main_of(llm))
    assert llm.asked == []


async def test_speculative_mode_flags_the_crews_destructive_calls() -> None:
    k = kernel()
    cp = await k.run(main_of(scripted()), speculative=True)
    assert cp.status == "COMPLETED"
    assert [(f.index, f.tool_name) for f in k.scan(cp).flagged] == [(3, "delete_file")]


async def test_a_model_step_is_one_readable_record(tmp_path: Path) -> None:
    from castor.cli import main

    db = tmp_path / "castor.db"
    cp = await kernel(store=f"sqlite:///{db}").run(main_of(scripted()), pid="crew-inspect")
    request = cp.syscall_log[2].arguments["request"]
    assert [m["role"] for m in request["messages"]] == ["system", "user", "assistant", "user"]
    assert request["messages"][2]["content"].endswith("Observation: found old logs")
    assert cp.syscall_log[2].response["text"] == DEFAULT[1]
    out = io.StringIO()
    with redirect_stdout(out):
        assert await asyncio.to_thread(main, ["--db", str(db), "inspect", "crew-inspect"]) == 0
    assert "[2] model scripted: " in out.getvalue() and "Action: delete_file" in out.getvalue()


async def test_a_different_request_at_a_journaled_step_raises_naming_the_step() -> None:
    llm = scripted()
    k = kernel()
    cp = await k.run(main_of(llm))
    await k.approve(cp)
    with pytest.raises(ReplayDivergenceError) as caught:
        await k.run(main_of(llm, prompt="clean up everything"), checkpoint=cp)
    assert caught.value.step == 0


def test_a_tool_castor_cannot_call_is_refused_at_guard() -> None:
    @tool("tag")
    def tag(path: str, label: str | None = None) -> str:
        """Tag a file."""
        return path

    for _ in range(2):  # refused at every guard(), not only the first (a tool's check is remembered once it passed)
        with pytest.raises(UnsupportedToolError) as caught:
            guard(tag)
        assert str(caught.value).startswith("CrewAI tool 'tag' cannot be guarded: argument 'label' uses 'anyOf'")


async def test_a_streaming_crew_reads_the_guarded_llms_chunks_and_suspends() -> None:
    llm = scripted()
    k = kernel()
    seen: list[str] = []
    cp = await k.run(main_of(llm, read=seen.append))
    # the wrapped LLM streamed each call (Crew(stream=True) asked the guarded one), and its chunks reached the
    # crew's stream; each call is one journaled step, and the suspension came through CrewAI's stream thread
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"
    assert [r.tool_name for r in cp.syscall_log] == ["model:scripted", "search", "model:scripted"]
    assert llm.streamed == 2 and seen == words(DEFAULT[0]) + words(DEFAULT[1])
    await k.approve(cp)
    seen.clear()
    cp = await k.run(main_of(llm, read=seen.append), checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert len(llm.asked) == 3 and llm.streamed == 3  # steps 0 and 2 came from the journal
    assert seen == [DEFAULT[0], DEFAULT[1], *words(DEFAULT[2])]  # a replayed step: its journaled text, whole


async def test_the_guarded_llm_hands_the_wrapped_one_the_executors_stop_words() -> None:
    llm = scripted()
    cp = await kernel().run(main_of(llm))
    assert cp.status == "SUSPENDED_FOR_HITL"
    assert llm.stops and all("\nObservation:" in stop for stop in llm.stops)
    assert "\nObservation:" in cp.syscall_log[0].arguments["request"]["stop"]


def test_a_message_is_converted_once_and_again_when_it_was_edited_in_place() -> None:
    parts = MessageParts()
    message = {"role": "assistant", "content": "Action: search", "cache_breakpoint": True}
    first = parts(message)
    assert first == {"role": "assistant", "content": "Action: search"} and parts(message) is first
    message["content"] += "\nObservation: found"  # CrewAI's messages are dicts: an edit must reach the journal
    assert parts(message) == {"role": "assistant", "content": "Action: search\nObservation: found"}
    message["name"] = "janitor"
    assert parts(message)["name"] == "janitor"
