"""A CrewAI crew under Castor: ``Crew.kickoff``'s real loop (text mode) with a scripted LLM.

CrewAI is not in the ``dev`` extra (it pins ``openai<3``, the OpenAI Agents SDK needs ``openai>=3``; see
``castor/frameworks/crewai.py``): these tests run where ``castor[crewai]`` is installed (``.ci/run``: a
venv of its own). The scripted LLM answers by the conversation (the n-th answer after n assistant messages) and
records every call, so a model call Castor should have served from the journal shows up in the counts. Asked
to stream (``Crew(stream=True)`` sets it on the agent's LLM, the guarded one), it emits its answer word by word as
``LLMStreamChunkEvent``s, as CrewAI's own LLMs do.
"""

from __future__ import annotations

import ast
import json
import operator
from collections.abc import Sequence
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
from castor.frameworks._crewai_llm import MessageParts
from castor.frameworks.crewai import guard, kickoff, tools_of
from tests.frameworks.contract import PROMPT, SCRIPT, Call, Refusal, ToolResult, Turn, numbered
from tests.frameworks.crewai_offline import OFFLINE

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


class CrewAICase:
    """The contract (``test_contract.py``) as a one-agent crew in text (ReAct) mode, run by ``kickoff``."""

    framework = "CrewAI"
    model_name = "scripted"
    tool_result_word = "the 'Observation:' CrewAI appends to the assistant's action (the result's repr)"
    call_ids = False  # text mode: no call ids
    inspected_call = "Action: delete_file"
    reports_usage = False  # a CrewAI LLM answers text only: Castor counts the tokens itself

    def environment(self) -> dict[str, str]:
        return dict(OFFLINE)

    def scripted(self, turns: Sequence[Turn] = SCRIPT, *, from_turn: int = 0) -> Scripted:
        return scripted(*[_text(turn) for turn in numbered(turns, from_turn)])

    def agent(self, model: Any, prompt: str = PROMPT) -> Any:
        return main_of(model, prompt)

    def kernel(self, **options: Any) -> Castor:
        return kernel(**options)

    def tool_result(self, model: Any) -> ToolResult:
        answered = model.asked[-1][-2]  # the assistant's action and its observation, then CrewAI's prompt
        assert answered["role"] == "assistant"
        action, observation = answered["content"].split("\nObservation: ")
        assert action == DEFAULT[1]
        return ToolResult(None, ast.literal_eval(observation))

    def check_record(self, cp: Any, inspected: str) -> None:
        request = cp.syscall_log[2].arguments["request"]
        assert [m["role"] for m in request["messages"]] == ["system", "user", "assistant", "user"]
        assert request["messages"][2]["content"].endswith("Observation: found old logs")
        assert cp.syscall_log[2].response["text"] == DEFAULT[1]

    def refusals(self) -> list[Refusal]:
        @tool("tag")
        def tag(path: str, label: str | int = 0) -> str:
            """Tag a file."""
            return path

        return [Refusal(lambda: guard(tag), "CrewAI tool 'tag' cannot be guarded: argument 'label' uses 'anyOf'",
                        whole=False)]


def _text(turn: Turn) -> str:
    if isinstance(turn, Call):
        return act(turn.name, json.dumps(turn.arguments))
    return final(turn.text)


CASES = {"crewai": CrewAICase()}


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



def test_a_conversation_takes_the_last_ones_parts_and_converts_what_changed() -> None:
    """``MessageParts.conversation``: the last conversation's parts for the same dicts holding the same items,
    each message converted as ``MessageParts`` converts it alone otherwise."""
    parts = MessageParts()
    conversation: list[Any] = [{"role": "system", "content": "be tidy"}, {"role": "user", "content": "clean up"}]
    first = parts.conversation(conversation)
    assert first == [{"role": "system", "content": "be tidy"}, {"role": "user", "content": "clean up"}]
    conversation += [{"role": "assistant", "content": "Action: search"}, {"role": "user", "content": "go on"}]
    second = parts.conversation(conversation)
    assert second[:2] == first and all(map(operator.is_, second[:2], first)) and second is not first
    assert second[2:] == [{"role": "assistant", "content": "Action: search"}, {"role": "user", "content": "go on"}]
    conversation[1]["content"] = "clean up the logs"  # edited in place: seen, though the dict is the same
    conversation.append({"role": "assistant", "content": "Final Answer: done", "cache_breakpoint": True})
    third = parts.conversation(conversation)
    fresh = MessageParts()
    assert third == [fresh(message) for message in conversation]
    assert third[1] == {"role": "user", "content": "clean up the logs"}
    assert parts.conversation(conversation[1:]) == third[1:]  # another conversation: converted message by message
    assert parts.conversation(["a text", *conversation]) == [fresh("a text"), *third]


def test_the_first_conversation_is_converted_as_each_message_alone_and_kept() -> None:
    """A ``MessageParts`` asked first with a whole conversation (a replay's landing step) converts each
    message as it converts one alone (a cache breakpoint dropped, a value that is not text through canonical
    JSON), keeps each part, and takes them again for the conversation continued."""
    conversation: list[Any] = [
        {"role": "system", "content": "be tidy"}, {"role": "user", "content": "clean up", "cache_breakpoint": True},
        {"role": "assistant", "content": [{"type": "text", "text": "Action: search"}]}, {"role": "user", "content": ""},
        {},
    ]
    parts = MessageParts()
    first = parts.conversation(conversation)
    fresh = MessageParts()
    assert first == [fresh(message) for message in conversation]
    assert all(parts(message) is part for message, part in zip(conversation, first, strict=True))
    conversation.append({"role": "user", "content": "go on"})
    second = parts.conversation(conversation)
    assert all(map(operator.is_, second[:-1], first)) and second[-1] == {"role": "user", "content": "go on"}


BROKEN: list[str] = []


@tool("broken")
def broken(path: str) -> str:
    """Break."""
    BROKEN.append(path)
    raise ValueError("disk on fire")


async def test_a_crew_that_went_past_a_failing_tool_resumes_without_calling_anything_again() -> None:
    """CrewAI hands a tool's error to the model as the observation and goes on: the failed step is
    journaled, so a resume replays it and every step after it (the model and the tools called once each)."""
    BROKEN.clear()
    llm = scripted(act("broken", '{"path": "/x"}'), act("delete_file", '{"path": "/tmp/old"}'), final("done"))

    async def main() -> str:
        agent = Agent(role="janitor", goal="clean", backstory="tidy", llm=llm, tools=[broken, delete_file],
                      max_iter=5)
        crew = Crew(agents=[agent], tasks=[Task(description="clean up", expected_output="a word", agent=agent)])
        return str(await kickoff(crew))

    k = Castor(tools=tools_of([broken, delete_file]), destructive=["delete_file"])
    cp = await k.run(main)
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"
    tries = len(BROKEN)  # CrewAI tries a failing tool again a few times: each try is a step of its own
    assert tries > 1 and [(r.tool_name, r.failure is not None) for r in cp.syscall_log] == [
        ("model:scripted", False), *[("broken", True)] * tries, ("model:scripted", False)]
    await k.approve(cp)
    cp = await k.run(main, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert len(BROKEN) == tries and len(llm.asked) == 3  # none tried again, the model asked once a step
