"""A smolagents ``ToolCallingAgent`` under Castor: its real (synchronous) loop with a scripted ``Model``.

The scripted model answers by the conversation it is given (the n-th answer when the messages hold n
assistant messages already) and records every request, so a model call Castor should have served from
the journal shows up in the counts. ``SmolagentsCase`` runs the framework contract (``test_contract.py``)
with it; the tests below are smolagents' own.
"""

from __future__ import annotations

import ast
import asyncio
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest

pytest.importorskip("smolagents")

from smolagents import Tool, ToolCallingAgent, tool
from smolagents.models import ChatMessage, ChatMessageToolCall, ChatMessageToolCallFunction, MessageRole, Model
from smolagents.monitoring import TokenUsage
from smolagents.utils import AgentGenerationError

from castor import Castor
from castor.errors import UnsupportedError
from castor.frameworks.smolagents import guard, run, tools_of
from castor.llm import ModelTimeoutError
from tests.frameworks.contract import INSPECTED_CALL, PROMPT, SCRIPT, Call, Refusal, ToolResult, Turn, numbered


@tool
def search(query: str) -> str:
    """Search the logs.

    Args:
        query: what to look for
    """
    return f"found {query}"


@tool
def delete_file(path: str) -> str:
    """Delete a file.

    Args:
        path: the file to delete
    """
    return f"deleted {path}"


def call(name: str, arguments: dict[str, Any], call_id: str) -> ChatMessage:
    function = ChatMessageToolCallFunction(name=name, arguments=arguments)
    return ChatMessage(role=MessageRole.ASSISTANT, content="", token_usage=TokenUsage(10, 5),
                       tool_calls=[ChatMessageToolCall(id=call_id, type="function", function=function)])


DEFAULT = (
    call("search", {"query": "old logs"}, "c1"),
    call("delete_file", {"path": "/tmp/old"}, "c2"),
    call("final_answer", {"answer": "done"}, "c3"),
)


def role(message: Any) -> Any:
    return message.role if isinstance(message, ChatMessage) else message["role"]


def text(message: Any) -> str:
    content = message.content if isinstance(message, ChatMessage) else message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


class Scripted(Model):
    """The n-th answer for messages holding n assistant messages; records every request."""

    def __init__(self, *answers: ChatMessage) -> None:
        super().__init__(model_id="scripted")
        self.answers = answers or DEFAULT
        self.asked: list[list[Any]] = []

    def generate(self, messages: list[Any], *args: Any, **kwargs: Any) -> ChatMessage:
        self.asked.append(list(messages))
        n = sum(1 for m in messages if role(m) == MessageRole.ASSISTANT)
        return self.answers[n]


def agent_of(model: Model, tools: list[Tool] | None = None) -> ToolCallingAgent:
    return ToolCallingAgent(tools=tools or [search, delete_file], model=model, verbosity_level=-1)


def main_of(model: Model, prompt: str = "clean up old logs") -> Any:
    async def main() -> str:
        return str(await run(agent_of(model), prompt))

    return main


def kernel(**options: Any) -> Castor:
    return Castor(tools=tools_of(agent_of(Scripted())), destructive=["delete_file"], **options)


class SmolagentsCase:
    """The contract (``test_contract.py``) as a smolagents ``ToolCallingAgent`` (``run``: in a worker thread)."""

    framework = "smolagents"
    model_name = "scripted"
    tool_result_word = "a tool-response message, 'Observation:' and the result's repr"
    call_ids = False  # smolagents' observation message names no call
    inspected_call = INSPECTED_CALL
    reports_usage = True  # TokenUsage(10, 5): 10 in, 5 out

    def environment(self) -> dict[str, str]:
        return {}

    def scripted(self, turns: Sequence[Turn] = SCRIPT, *, from_turn: int = 0) -> Scripted:
        return Scripted(*[_message(turn) for turn in numbered(turns, from_turn)])

    def agent(self, model: Any, prompt: str = PROMPT) -> Any:
        return main_of(model, prompt)

    def kernel(self, **options: Any) -> Castor:
        return kernel(**options)

    def tool_result(self, model: Any) -> ToolResult:
        last = model.asked[-1][-1]
        assert role(last) == MessageRole.TOOL_RESPONSE
        observed = text(last)
        assert observed.startswith("Observation:\n")
        return ToolResult(None, ast.literal_eval(observed.removeprefix("Observation:\n")))

    def check_record(self, cp: Any, inspected: str) -> None:
        request = cp.syscall_log[2].arguments["request"]
        assert [m["role"] for m in request["messages"]] == ["system", "user", "assistant", "tool-call",
                                                            "tool-response"]
        assert request["messages"][-1]["content"] == [{"type": "text", "text": "Observation:\nfound old logs"}]
        assert [t["name"] for t in request["tools"]] == ["search", "delete_file", "final_answer"]

    def refusals(self) -> list[Refusal]:
        class Resize(Tool):
            name = "resize"
            description = "Resize an image."
            inputs: ClassVar[dict[str, Any]] = {"image": {"type": "image", "description": "the image"}}
            output_type = "string"

            def forward(self, image: Any) -> str:
                return "resized"

        return [Refusal(lambda: guard(agent_of(Scripted(), [Resize()])),
                        "smolagents tool 'resize' cannot be guarded: argument 'image' has type 'image', which a "
                        "JSON tool call cannot carry")]


def _message(turn: Turn) -> ChatMessage:
    """A turn as the model's message; the final answer is smolagents' final_answer tool."""
    if isinstance(turn, Call):
        return call(turn.name, turn.arguments, turn.id)
    return call("final_answer", {"answer": turn.text}, "c3")


CASES = {"smolagents": SmolagentsCase()}


async def test_a_tool_subclass_runs_its_forward_and_agent_run_outside_the_runner_is_refused() -> None:
    class Count(Tool):
        name = "count"
        description = "Count the files under a path."
        inputs: ClassVar[dict[str, Any]] = {
            "path": {"type": "string", "description": "where"},
            "depth": {"type": "integer", "description": "how deep", "nullable": True},
        }
        output_type = "string"

        def forward(self, path: str, depth: int | None = None) -> str:
            return f"{path}: 3 files (depth {depth})"

    script = Scripted(call("count", {"path": "/tmp"}, "c1"), call("final_answer", {"answer": "3"}, "c2"))
    agent = agent_of(script, [Count()])
    k = Castor(tools=tools_of(agent))

    async def main() -> Any:
        return await run(agent_of(script, [Count()]), "count")

    cp = await k.run(main)
    assert cp.status == "COMPLETED" and cp.syscall_log[1].response == "/tmp: 3 files (depth None)"

    async def blocking_main() -> Any:
        return guard(agent_of(Scripted(), [Count()])).run("count")  # on the run's loop: would deadlock

    with pytest.raises(AgentGenerationError) as caught:  # smolagents wraps the model's error
        await k.run(blocking_main)
    assert isinstance(caught.value.__cause__, UnsupportedError)
    assert "call `await castor.frameworks.smolagents.run(agent, task)` inside a Castor run" in str(caught.value)


async def test_more_concurrent_runs_than_the_loops_default_executor_has_workers_all_finish() -> None:
    # Each run's smolagents loop holds a thread while it waits for its model call on the run's loop: in
    # the loop's default executor (min(32, cores + 4) workers), that many runs would wait for ever.
    k = kernel()
    runs = [k.run(main_of(Scripted()), speculative=True) for _ in range(12)]
    done = await asyncio.wait_for(asyncio.gather(*runs), timeout=60)
    assert [cp.status for cp in done] == ["COMPLETED"] * 12


async def test_the_wrapped_model_answers_in_the_agents_own_thread() -> None:
    # The agent's thread waits for its model step anyway: the model runs there, not in a third thread.
    threads: list[str] = []

    class Where(Scripted):
        def generate(self, messages: list[Any], *args: Any, **kwargs: Any) -> ChatMessage:
            threads.append(threading.current_thread().name)
            return super().generate(messages, *args, **kwargs)

    cp = await kernel().run(main_of(Where()), speculative=True)
    assert cp.status == "COMPLETED" and threads == ["castor-run"] * 3


async def test_a_model_past_the_llm_timeout_ends_the_run_while_it_still_runs() -> None:
    # Under a deadline the model runs in a thread of its own: the agent's thread must not wait for it.
    release = threading.Event()

    class Hung(Scripted):
        def generate(self, messages: list[Any], *args: Any, **kwargs: Any) -> ChatMessage:
            release.wait(30)
            return super().generate(messages, *args, **kwargs)

    try:
        with pytest.raises(ModelTimeoutError):
            await asyncio.wait_for(kernel(llm_timeout=0.2).run(main_of(Hung())), timeout=20)
    finally:
        release.set()


async def test_a_sync_tool_runs_in_the_agents_own_thread_unless_it_has_a_deadline() -> None:
    # As unguarded: the agent's thread waits for the tool call anyway, so the tool runs there (no pool hop);
    # a tool with a deadline runs in the pool, where the run can stop waiting for it.
    from castor import castor_tool

    threads: list[str] = []

    def search_here(query: str) -> str:
        threads.append(threading.current_thread().name)
        return f"found {query}"

    @castor_tool(timeout_seconds=5)
    def delete_in_pool(path: str) -> str:
        threads.append(threading.current_thread().name)
        return f"deleted {path}"

    k = Castor(tools=[("search", search_here), ("delete_file", delete_in_pool)])
    cp = await k.run(main_of(Scripted()))
    assert cp.status == "COMPLETED" and threads[0] == "castor-run"
    assert threads[1].startswith("castor-tool")


BROKEN: list[str] = []


@tool
def broken(path: str) -> str:
    """Break.

    Args:
        path: the file that breaks it
    """
    BROKEN.append(path)
    raise ValueError("disk on fire")


async def test_a_run_that_went_past_a_failing_tool_resumes_without_calling_anything_again() -> None:
    """smolagents hands the tool's error to the model as an observation and goes on: the failed step is
    journaled, so a resume replays it and every step after it (the model and the tools called once each)."""
    BROKEN.clear()
    script = Scripted(call("broken", {"path": "/x"}, "c1"), call("delete_file", {"path": "/tmp/old"}, "c2"),
                      call("final_answer", {"answer": "done"}, "c3"))

    async def main() -> str:
        return str(await run(agent_of(script, [broken, search, delete_file]), "clean up old logs"))

    k = Castor(tools=tools_of([broken, search, delete_file]), destructive=["delete_file"])
    cp = await k.run(main)
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"
    assert [r.tool_name for r in cp.syscall_log] == ["model:scripted", "broken", "model:scripted"]
    assert "disk on fire" in text(script.asked[-1][-1])  # the model was told, as smolagents does
    await k.approve(cp)
    cp = await k.run(main, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert BROKEN == ["/x"] and len(script.asked) == 3  # once each over the run's life
