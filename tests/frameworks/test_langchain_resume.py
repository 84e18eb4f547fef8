"""A replayed LangGraph ReAct agent starts at its last journaled model step (``castor.frameworks._langchain_resume``).

Each test counts the chat model calls LangChain starts during the replay (a callback handler): the guarded
model is asked once per model step the graph runs, served from the journal or not. A replay that starts
late asks it once (the landing step); one that runs the whole loop asks it at every step. The state a
late start returns must be the one the whole loop returns: the same messages, field for field (ids
aside: LangGraph gives tool messages fresh ones either way).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("langgraph")

from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage
from langgraph.errors import GraphRecursionError

import castor.frameworks._langchain_resume as resume
from castor.errors import ReplayDivergenceError
from castor.frameworks.langchain import guard
from castor.lib import tool
from tests.frameworks.test_langchain import (
    TOOLS,
    USAGE,
    ScriptedChat,
    call,
    create_agent,
    create_react_agent,
    kernel,
    model_of,
)

pytestmark = pytest.mark.filterwarnings("ignore:create_react_agent has been moved")

STEPS = 4


class ModelStarts(AsyncCallbackHandler):
    """Counts the chat model calls a graph starts."""

    def __init__(self) -> None:
        self.count = 0

    async def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.count += 1


def searches(steps: int = STEPS, *, then: str = "done") -> Iterator[AIMessage]:
    return iter([*(call("search", f"c{i}", query=f"q{i}") for i in range(steps)),
                 AIMessage(content=then, usage_metadata=USAGE)])


def build(factory: Any, model: Any, prompt: Any = "be brief", name: str | None = None) -> Any:
    if factory is create_react_agent:
        return create_react_agent(model, TOOLS, prompt=prompt, name=name)
    return create_agent(model, TOOLS, system_prompt=prompt, name=name)


def fields(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    """Each message as its fields, ids left out."""
    return [{k: v for k, v in m.model_dump().items() if k != "id"} for m in messages]


class Agent:
    """An agent function running a guarded ReAct graph; it keeps the last state and counts model starts."""

    def __init__(self, factory: Any, model: Any, *, stream: bool = False, limit: int | None = None,
                 **options: Any) -> None:
        self.factory, self.model, self.stream, self.limit, self.options = factory, model, stream, limit, options
        self.state: dict[str, Any] = {}
        self.starts = ModelStarts()

    async def __call__(self) -> str:
        self.starts.count = 0
        graph = guard(build(self.factory, self.model, **self.options))
        config: dict[str, Any] = {"callbacks": [self.starts]}
        if self.limit is not None:
            config["recursion_limit"] = self.limit
        given = {"messages": [("user", "search the logs")]}
        try:
            if self.stream:
                async for state in graph.astream(given, config, stream_mode="values"):
                    self.state = state
            else:
                self.state = await graph.ainvoke(given, config)
        except GraphRecursionError:
            return "recursion limit"
        return str(self.state["messages"][-1].content)


@pytest.fixture(params=["create_agent", "create_react_agent"])
def factory(request: pytest.FixtureRequest) -> Any:
    return {"create_agent": create_agent, "create_react_agent": create_react_agent}[request.param]


@pytest.mark.parametrize("name", [None, "librarian"])
async def test_a_replay_starts_at_the_last_journaled_model_step_with_the_state_the_loop_makes(
    factory: Any, name: str | None
) -> None:
    k = kernel()
    live = Agent(factory, model_of(searches()), name=name)
    cp = await k.run(live)
    assert cp.status == "COMPLETED" and live.starts.count == STEPS + 1
    replayed = Agent(factory, model_of(iter([])), name=name)  # a model call would raise: nothing left to say
    again = await k.run(replayed, checkpoint=cp.fork(at_step=len(cp.syscall_log)))
    assert again.status == "COMPLETED" and again.result == "done"
    assert replayed.starts.count == 1  # the landing step only
    assert fields(replayed.state["messages"]) == fields(live.state["messages"])
    if name:
        assert {m.name for m in replayed.state["messages"] if m.type == "ai"} == {name}


async def test_a_streamed_replay_runs_every_step_and_ends_in_the_same_state(factory: Any) -> None:
    k = kernel()
    live = Agent(factory, model_of(searches()))
    cp = await k.run(live)
    streamed = Agent(factory, model_of(iter([])), stream=True)
    again = await k.run(streamed, checkpoint=cp.fork(at_step=len(cp.syscall_log)))
    assert again.status == "COMPLETED" and streamed.starts.count == STEPS + 1
    assert fields(streamed.state["messages"]) == fields(live.state["messages"])


async def test_a_fork_inside_the_loop_starts_at_the_last_model_step_before_it(factory: Any) -> None:
    k = kernel()
    cp = await k.run(Agent(factory, model_of(searches())))
    later = Agent(factory, model_of(iter([AIMessage(content="enough", usage_metadata=USAGE)])))
    # Steps 0-4: model, search, model, search, model (its call of search at step 5 is not kept).
    forked = await k.run(later, checkpoint=cp.fork(at_step=5))
    assert forked.status == "COMPLETED" and forked.result == "enough"
    assert later.starts.count == 2  # step 4 from the journal, then the new answer
    assert [r.tool_name for r in forked.syscall_log][5:] == ["search", "model:generic-fake-chat-model"]


@pytest.mark.parametrize("limit", range(3, 12))
async def test_the_step_limit_ends_a_late_start_where_it_ended_the_loop(factory: Any, limit: int) -> None:
    """The graph's recursion limit is lowered by the supersteps a late start skips: LangGraph's
    ``remaining_steps`` (create_react_agent's "need more steps" answer) and its recursion error come at
    the same step as in the live run."""
    k = kernel()
    live = Agent(factory, model_of(searches()), limit=limit)
    cp = await k.run(live)
    replayed = Agent(factory, model_of(iter([])), limit=limit)
    again = await k.run(replayed, checkpoint=cp.fork(at_step=len(cp.syscall_log)))
    assert again.status == "COMPLETED" and again.result == cp.result
    if cp.result != "recursion limit":
        assert fields(replayed.state["messages"]) == fields(live.state["messages"])


async def test_a_changed_system_prompt_is_a_divergence_at_the_first_step(factory: Any) -> None:
    """The late start cannot see the prompt (the graph adds it): its landing step diverges, the loop
    runs again from its first step, and the divergence is reported there, as without a late start."""
    k = kernel()
    cp = await k.run(Agent(factory, model_of(searches()), prompt="be brief"))
    changed = Agent(factory, model_of(iter([])), prompt="be thorough")
    with pytest.raises(ReplayDivergenceError, match="replay divergence at step 0:"):
        await k.run(changed, checkpoint=cp.fork(at_step=len(cp.syscall_log)))
    assert changed.starts.count == 2  # the landing step, then the first step


async def test_a_landing_step_asked_otherwise_replays_the_whole_loop(
    factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the rebuilt conversation make another request at the landing step than the journal holds
    (a prompt function reading what the journal does not keep), the graph runs from the loop's start."""
    k = kernel()
    live = Agent(factory, model_of(searches()))
    cp = await k.run(live)
    rebuild: Callable[..., Any] = resume._conversation

    def off_by_one(*args: Any) -> Any:
        messages = rebuild(*args)
        return None if messages is None else [SystemMessage("stale"), *messages]

    monkeypatch.setattr(resume, "_conversation", off_by_one)
    replayed = Agent(factory, model_of(iter([])))
    again = await k.run(replayed, checkpoint=cp.fork(at_step=len(cp.syscall_log)))
    assert again.status == "COMPLETED" and again.result == "done"
    assert replayed.starts.count == 1 + STEPS + 1  # the landing step, then the whole loop
    assert fields(replayed.state["messages"]) == fields(live.state["messages"])


async def test_calls_around_the_graph_and_a_second_invocation_replay_in_place(factory: Any) -> None:
    """The agent calls a tool, runs the graph, runs it again on the same conversation, calls a tool: each
    invocation starts at its own last model step, and the calls around them are replayed as they were."""
    model = model_of(iter([*searches(2, then="first"), *searches(2, then="second")]))
    states: list[dict[str, Any]] = []
    starts = ModelStarts()

    async def agent() -> str:
        states.clear()
        starts.count = 0
        await tool("search", query="before")
        graph = guard(build(factory, model))
        config = {"callbacks": [starts]}
        state = await graph.ainvoke({"messages": [("user", "search")]}, config)
        states.append(state)
        state = await graph.ainvoke({"messages": [*state["messages"], ("user", "again")]}, config)
        states.append(state)
        await tool("search", query="after")
        return str(state["messages"][-1].content)

    k = kernel()
    cp = await k.run(agent)
    assert cp.status == "COMPLETED" and cp.result == "second" and starts.count == 6
    live = [fields(s["messages"]) for s in states]
    model.messages = iter([])
    again = await k.run(agent, checkpoint=cp.fork(at_step=len(cp.syscall_log)))
    assert again.status == "COMPLETED" and again.result == "second"
    assert starts.count == 2 and [fields(s["messages"]) for s in states] == live


async def test_a_run_resumed_after_approval_starts_at_the_step_that_asked_for_the_call(factory: Any) -> None:
    k = kernel()
    model = model_of(iter([*(call("search", f"c{i}", query=f"q{i}") for i in range(3)),
                           call("delete_file", "d", path="/tmp/old"), AIMessage(content="done", usage_metadata=USAGE)]))
    agent = Agent(factory, model)
    cp = await k.run(agent)
    assert cp.status == "SUSPENDED_FOR_HITL" and agent.starts.count == 4
    await k.approve(cp)
    cp = await k.run(agent, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "done"
    assert agent.starts.count == 2  # the step that asked for delete_file (journaled), then the last answer
    assert len(model.asked) == 5  # once per model step over the run's life


async def test_a_graph_with_a_node_of_its_own_replays_every_step() -> None:
    """A model hook is a node whose state a late start would not rebuild: such a graph runs its whole loop."""
    model = model_of(searches())
    starts = ModelStarts()

    async def agent() -> str:
        starts.count = 0
        graph = guard(create_react_agent(model, TOOLS, pre_model_hook=lambda state: {}))
        state = await graph.ainvoke({"messages": [("user", "search")]}, {"callbacks": [starts]})
        return str(state["messages"][-1].content)

    k = kernel()
    cp = await k.run(agent)
    model.messages = iter([])
    again = await k.run(agent, checkpoint=cp.fork(at_step=len(cp.syscall_log)))
    assert again.status == "COMPLETED" and again.result == "done" and starts.count == STEPS + 1


async def test_a_copy_langgraph_makes_of_the_graph_starts_late_too(factory: Any) -> None:
    """``with_config`` copies the graph (``Pregel.copy``): the copy is of the guarded graph's class."""
    model = model_of(searches())
    starts = ModelStarts()

    async def agent() -> str:
        starts.count = 0
        graph = guard(build(factory, model)).with_config(recursion_limit=50, callbacks=[starts])
        state = await graph.ainvoke({"messages": [("user", "search")]})
        return str(state["messages"][-1].content)

    k = kernel()
    cp = await k.run(agent)
    model.messages = iter([])
    again = await k.run(agent, checkpoint=cp.fork(at_step=len(cp.syscall_log)))
    assert again.status == "COMPLETED" and again.result == "done" and starts.count == 1


@pytest.mark.parametrize(("options", "late"), [({"context": {"user": "ann"}}, True),
                                               ({"output_keys": ["messages"]}, False)])
async def test_options_that_keep_the_final_state_start_late_and_others_replay_every_step(
    factory: Any, options: dict[str, Any], late: bool
) -> None:
    """``context`` (the run's runtime context) leaves ``ainvoke``'s result the final state; ``output_keys``
    and the other options that change what it returns replay the whole loop."""
    model = model_of(searches())
    starts = ModelStarts()
    states: list[Any] = []

    async def agent() -> str:
        starts.count = 0
        graph = guard(factory(model, TOOLS, context_schema=dict))
        state = await graph.ainvoke({"messages": [("user", "search")]}, {"callbacks": [starts]}, **options)
        states.append(state)
        return str(state["messages"][-1].content)

    k = kernel()
    cp = await k.run(agent)
    model.messages = iter([])
    again = await k.run(agent, checkpoint=cp.fork(at_step=len(cp.syscall_log)))
    assert again.status == "COMPLETED" and again.result == "done"
    assert starts.count == (1 if late else STEPS + 1)
    assert fields(states[-1]["messages"]) == fields(states[0]["messages"])


class Conversational(ScriptedChat):
    """Answers from the conversation it is asked (not from a shared script): ``STEPS`` searches for the
    user's words, then ``done <words>``; it counts the calls it answers."""

    answered: int = 0

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.answered += 1
        words = str(messages[1].content)  # after the system prompt
        n = sum(m.type == "ai" for m in messages)
        answer = call("search", f"c{n}", query=f"{words} {n}") if n < STEPS else AIMessage(
            content=f"done {words}", usage_metadata=USAGE)
        self.messages = iter([answer])
        return super()._generate(messages, *args, **kwargs)


async def test_one_graph_compiled_once_serves_concurrent_runs_live_and_replayed(factory: Any) -> None:
    """A graph compiled and guarded once (a module-level agent) driven by several runs at once: each run
    keeps its own conversation, and each replay starts late at its own last step, at the same time."""
    import asyncio

    model = Conversational(messages=iter([]))
    graph = guard(build(factory, model))
    states: dict[tuple[str, bool], Any] = {}
    starts: dict[str, ModelStarts] = {}

    def agent(words: str, replay: bool) -> Any:
        async def run() -> str:
            starts[words] = ModelStarts()
            state = await graph.ainvoke({"messages": [("user", words)]}, {"callbacks": [starts[words]]})
            states[words, replay] = state
            return str(state["messages"][-1].content)

        return run

    k = kernel()
    words = ["alpha", "beta", "gamma"]
    live = await asyncio.gather(*(k.run(agent(w, False)) for w in words))
    assert [cp.result for cp in live] == [f"done {w}" for w in words]
    assert model.answered == len(words) * (STEPS + 1)
    replayed = await asyncio.gather(*(k.run(agent(w, True), checkpoint=cp.fork(at_step=len(cp.syscall_log)))
                                      for w, cp in zip(words, live, strict=True)))
    assert [cp.result for cp in replayed] == [f"done {w}" for w in words]
    assert model.answered == len(words) * (STEPS + 1)  # every step from the journal
    assert all(starts[w].count == 1 for w in words)  # each replay at its landing step only
    for w in words:
        assert fields(states[w, True]["messages"]) == fields(states[w, False]["messages"])
        tools = [m.content for m in states[w, True]["messages"] if m.type == "tool"]
        assert tools == [f"found {w} {n}" for n in range(STEPS)], tools  # no run's results in another's


async def test_a_late_start_charges_what_the_whole_loop_charges() -> None:
    """Budgets: a run resumed after approval, or forked at its end, is charged once for every step, the
    skipped ones from the journal, however late it starts (five answers of 15 tokens, four tool calls)."""
    budgets = {"tokens": 10_000, "api": 10}
    k = kernel(budgets=budgets)
    agent = Agent(create_agent, model_of(iter([*(call("search", f"c{i}", query=f"q{i}") for i in range(3)),
                                               call("delete_file", "d", path="/tmp/old")])))
    cp = await k.run(agent)
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.budget_used("tokens") == 60 and cp.budget_used("api") == 3
    await k.approve(cp)
    agent.model.messages = iter([AIMessage(content="done", usage_metadata=USAGE)])
    cp = await k.run(agent, checkpoint=cp)
    assert cp.status == "COMPLETED" and agent.starts.count == 2  # started late: steps 0-6 not run
    assert cp.budget_used("tokens") == 75 and cp.budget_used("api") == 4
    assert cp.budget_remaining("tokens") == 10_000 - 75
    replayed = Agent(create_agent, model_of(iter([])))
    forked = await kernel(budgets=budgets).run(replayed, checkpoint=cp.fork(at_step=len(cp.syscall_log)))
    assert forked.status == "COMPLETED" and replayed.starts.count == 1
    assert forked.budget_used("tokens") == 75 and forked.budget_used("api") == 4  # the journal's, not twice
