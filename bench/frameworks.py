"""What guarding a framework's agent costs: its own loop, under Castor, and replayed from the journal.

    python bench/frameworks.py              # every installed framework, 7 repetitions; a minute or two
    python bench/frameworks.py --repeat 3 --steps 20 --only langgraph
    python bench/frameworks.py --only langgraph-once        # one LangGraph graph compiled beforehand
    python bench/frameworks.py --only smolagents-once       # one smolagents agent built beforehand
    python bench/frameworks.py --latency 0.05 --repeat 3   # a model that takes 50 ms to answer, as an API does
    python bench/frameworks.py --icount [--tree DIR]       # instructions per step under callgrind (bench/_fw_icount.py)

Per framework, a scripted model asks for ``search`` ``--steps`` times, then answers; one step is a model
call and the tool call it asks for. Three figures, each the median over the repetitions of a whole run
divided by the steps:

- alone: the framework's agent without Castor (``graph.ainvoke`` / ``agent.run``);
- embedded: the guarded agent under ``Castor(tools=...)`` on the memory store (every model call and
  tool call a journaled syscall);
- layers: the guarded agent under Castor with its model step and tool call short-circuited (the
  framework's model and tool called directly, nothing journaled): what wrapping the framework's
  objects and converting requests and responses cost, without Castor's syscalls;
- replayed: a fork of that run at its last step, so every step comes from the journal and the model
  and tools are not called (the framework's loop still runs, or, for LangGraph, its last step).

"added" is the median of each repetition's embedded run less the alone run beside it (the same
moment's load on a shared machine; the pair's order alternates), not the difference of the two medians;
"spread" is those differences' middle half (first to third quartile). On a virtual machine whose speed
moves from one moment to the next the spread can be wider than what is measured: the instruction counts
(``--icount``) are the steady figures. ``langgraph`` builds its graph
in the agent function at every run, as the LangGraph example does; ``langgraph-once`` invokes one graph
compiled beforehand, as pydantic-ai's and the Agents SDK's cases build their agent once; likewise
``smolagents`` builds its agent at every run (about 6 ms of the run) and ``smolagents-once`` runs one
built beforehand.

Times are the process's CPU time (``time.process_time``, all its threads): on a shared machine the wall
clock mostly measures the other processes. With ``--latency S`` the scripted model also waits ``S``
seconds before it answers (what a real model's API call takes, without the network): a live step then
costs what a step of the framework's loop costs in use, and the table adds the wall-clock time per
step of the live and the replayed run, whose ratio is the replay goal's figure against a real model.

Every scripted model reports its usage (10 tokens in, 5 out), as a provider's model does; one that
reports none makes Castor estimate it at each step.

Goals (issue 12): embedded − alone ≤ 50 µs per step; replayed ≤ 10% of a live step. Figures go to
``docs/benchmarks.md`` ("Framework guards") by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

from castor import Castor

Case = tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[Any]], list[Any]]
"""The unguarded agent function, the guarded one, and the tools for ``Castor(tools=...)``."""

# Every scripted model reports its usage, as providers' models do: a model that reports none costs
# Castor an estimate of its tokens at each step (``castor.llm.cost``), which is not the usual case.
USAGE_LC = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}


async def search(query: str) -> str:
    """The one tool: answers at once, so the figures are the loop's and Castor's."""
    return f"found {query}"


# --- LangGraph ----------------------------------------------------------------------------------------


def langgraph_case(steps: int, latency: float = 0.0, compiled_once: bool = False) -> Case:
    """The unguarded and the guarded agent functions, and the tools for Castor. The agent functions build
    their graph at every run, as the LangGraph example does; ``compiled_once``: they invoke one graph
    built beforehand (a module-level graph, as pydantic-ai's and the Agents SDK's cases build their agent)."""
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from langchain_core.tools import tool as lc_tool
    from langchain_core.utils.function_calling import convert_to_openai_tool

    from castor.frameworks.langchain import guard, tools_of

    warnings.filterwarnings("ignore", message="create_react_agent has been moved")
    from langgraph.prebuilt import create_react_agent

    class Scripted(BaseChatModel):
        @property
        def _llm_type(self) -> str:
            return "scripted"

        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self.bind(tools=[convert_to_openai_tool(t) for t in tools])

        def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
            raise NotImplementedError

        async def _agenerate(self, messages: Any, *args: Any, **kwargs: Any) -> ChatResult:
            if latency:
                await asyncio.sleep(latency)
            n = sum(isinstance(m, AIMessage) for m in messages)
            if n < steps:
                call = {"name": "search", "args": {"query": f"q{n}"}, "id": f"c{n}"}
                answer = AIMessage(content="", tool_calls=[call], usage_metadata=USAGE_LC)
            else:
                answer = AIMessage(content="done", usage_metadata=USAGE_LC)
            return ChatResult(generations=[ChatGeneration(message=answer)])

    tools = [lc_tool(search)]
    inputs = {"messages": [("user", "search")]}

    config: Any = {"recursion_limit": 4 * steps + 10}
    if compiled_once:
        plain, guarded_graph = create_react_agent(Scripted(), tools), guard(create_react_agent(Scripted(), tools))

        async def alone_once() -> Any:
            return await plain.ainvoke(inputs, config)

        async def guarded_once() -> Any:
            return await guarded_graph.ainvoke(inputs, config)

        return alone_once, guarded_once, tools_of(tools)

    async def alone() -> Any:
        return await create_react_agent(Scripted(), tools).ainvoke(inputs, config)

    async def guarded() -> Any:
        return await guard(create_react_agent(Scripted(), tools)).ainvoke(inputs, config)

    return alone, guarded, tools_of(tools)


def langgraph_compiled_once_case(steps: int, latency: float = 0.0) -> Case:
    """LangGraph's case with one graph compiled beforehand, invoked at every run."""
    return langgraph_case(steps, latency, compiled_once=True)


# --- pydantic-ai --------------------------------------------------------------------------------------


def pydantic_ai_case(steps: int, latency: float = 0.0) -> Case:
    """The unguarded and the guarded agent functions, and the tools for Castor."""
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import FunctionModel

    from castor.frameworks.pydantic_ai import guard, tools_of

    def scripted(messages: Any, info: Any) -> ModelResponse:
        n = sum(isinstance(m, ModelResponse) for m in messages)
        if n < steps:
            return ModelResponse(parts=[ToolCallPart("search", {"query": f"q{n}"}, tool_call_id=f"c{n}")])
        return ModelResponse(parts=[TextPart("done")])

    async def waiting(messages: Any, info: Any) -> ModelResponse:
        await asyncio.sleep(latency)
        return scripted(messages, info)

    # Without latency, the plain function as before (pydantic-ai runs it in a worker thread), so the
    # figures stay comparable with earlier ones.
    agent = Agent(FunctionModel(waiting if latency else scripted, model_name="scripted"), tools=[search])
    guarded_agent = guard(agent)

    async def alone() -> Any:
        return await agent.run("search")

    async def guarded() -> Any:
        return await guarded_agent.run("search")

    return alone, guarded, tools_of(agent)


# --- OpenAI Agents SDK --------------------------------------------------------------------------------


def openai_agents_case(steps: int, latency: float = 0.0) -> Case:
    """The unguarded and the guarded agent functions, and the tools for Castor (``latency``: seconds the
    scripted model waits before it answers)."""
    import os

    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-offline")
    from agents import Agent, Model, ModelResponse, Runner, Usage, function_tool, set_tracing_disabled
    from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

    from castor.frameworks.openai_agents import guard, tools_of

    set_tracing_disabled(True)

    class Scripted(Model):
        model = "scripted"

        async def get_response(self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any) -> ModelResponse:
            if latency:
                await asyncio.sleep(latency)
            n = sum(1 for item in input if item.get("type") == "function_call")
            if n < steps:
                output: list[Any] = [ResponseFunctionToolCall(type="function_call", call_id=f"c{n}", name="search",
                                                              arguments=f'{{"query": "q{n}"}}')]
            else:
                output = [ResponseOutputMessage(id="m", type="message", role="assistant", status="completed",
                                                content=[ResponseOutputText(type="output_text", text="done",
                                                                            annotations=[])])]
            usage = Usage(requests=1, input_tokens=10, output_tokens=5, total_tokens=15)
            return ModelResponse(output=output, usage=usage, response_id=None)

        def stream_response(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

    agent = Agent(name="bench", model=Scripted(), tools=[function_tool(search)])

    async def alone() -> Any:
        return await Runner.run(agent, "search", max_turns=steps + 5)

    async def guarded() -> Any:
        return await Runner.run(guard(agent), "search", max_turns=steps + 5)

    return alone, guarded, tools_of(agent)


# --- smolagents ---------------------------------------------------------------------------------------


def _sync_search(query: str) -> str:
    """The one tool, synchronous (smolagents and CrewAI call tools synchronously).

    Args:
        query: what to look for
    """
    return f"found {query}"


def smolagents_case(steps: int, latency: float = 0.0, built_once: bool = False) -> Case:
    """The unguarded and the guarded agent functions, and the tools for Castor (``latency``: seconds the
    scripted model waits before it answers, in the agent's thread, as a provider's HTTP call does). The agent
    functions build their agent at every run (about 6 ms: smolagents parses its prompt templates' YAML and
    renders the system prompt); ``built_once``: they run one agent each built beforehand (smolagents resets
    its memory at every run), as pydantic-ai's and the Agents SDK's cases do."""
    from smolagents import ToolCallingAgent, tool
    from smolagents.models import (
        ChatMessage,
        ChatMessageToolCall,
        ChatMessageToolCallFunction,
        MessageRole,
        Model,
    )
    from smolagents.monitoring import TokenUsage

    from castor.frameworks.smolagents import run, tools_of

    class Scripted(Model):
        def generate(self, messages: Any, *args: Any, **kwargs: Any) -> ChatMessage:
            if latency:
                time.sleep(latency)
            n = sum(1 for m in messages if m.role == MessageRole.ASSISTANT)
            name, arguments = ("search", {"query": f"q{n}"}) if n < steps else ("final_answer", {"answer": "done"})
            call = ChatMessageToolCall(id=f"c{n}", type="function",
                                       function=ChatMessageToolCallFunction(name=name, arguments=arguments))
            return ChatMessage(role=MessageRole.ASSISTANT, content="", tool_calls=[call],
                               token_usage=TokenUsage(input_tokens=10, output_tokens=5))

    def search(query: str) -> str:  # smolagents names a tool after its function
        """Search.

        Args:
            query: what to look for
        """
        return _sync_search(query)

    search_tool = tool(search)

    def agent() -> Any:
        return ToolCallingAgent(tools=[search_tool], model=Scripted(model_id="scripted"), verbosity_level=-1,
                                max_steps=steps + 5)

    if built_once:
        plain, kept = agent(), agent()

        async def alone_once() -> Any:
            return await asyncio.to_thread(plain.run, "search")

        async def guarded_once() -> Any:
            return await run(kept, "search")

        return alone_once, guarded_once, tools_of(search_tool)

    async def alone() -> Any:
        return await asyncio.to_thread(agent().run, "search")

    async def guarded() -> Any:
        return await run(agent(), "search")

    return alone, guarded, tools_of(search_tool)


def smolagents_built_once_case(steps: int, latency: float = 0.0) -> Case:
    """smolagents' case with one agent built beforehand, run at every run."""
    return smolagents_case(steps, latency, built_once=True)


# --- CrewAI -------------------------------------------------------------------------------------------


def crewai_case(steps: int) -> tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[Any]], list[Any]]:
    """The unguarded and the guarded crew functions, and the tools for Castor (needs castor[crewai])."""
    import os

    os.environ.update(CREWAI_DISABLE_TELEMETRY="true", OTEL_SDK_DISABLED="true", CREWAI_TRACING_ENABLED="false")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from crewai import Agent, Crew, Task
    from crewai.llms.base_llm import BaseLLM
    from crewai.tools import tool

    from castor.frameworks.crewai import kickoff, tools_of

    class Scripted(BaseLLM):
        def call(self, messages: Any, *args: Any, **kwargs: Any) -> str:
            n = sum(1 for m in messages if m.get("role") == "assistant")
            if n < steps:
                return f'Thought: more\nAction: search\nAction Input: {{"query": "q{n}"}}'
            return "Thought: I now know the final answer\nFinal Answer: done"

        def supports_function_calling(self) -> bool:
            return False

    search_tool = tool("search")(_sync_search)

    def crew() -> Any:
        agent = Agent(role="searcher", goal="search", backstory="b", llm=Scripted(model="scripted"),
                      tools=[search_tool], max_iter=steps + 5)
        return Crew(agents=[agent], tasks=[Task(description="search", expected_output="done", agent=agent)])

    async def alone() -> Any:
        return await asyncio.to_thread(crew().kickoff)

    async def guarded() -> Any:
        return await kickoff(crew())

    return alone, guarded, tools_of(search_tool)


CASES: dict[str, Callable[..., Case]] = {
    "langgraph": langgraph_case, "langgraph-once": langgraph_compiled_once_case, "pydantic-ai": pydantic_ai_case,
    "openai-agents": openai_agents_case, "smolagents": smolagents_case, "smolagents-once": smolagents_built_once_case,
    "crewai": crewai_case,
}
# Where each guard reads ``model_step`` and ``call_tool`` (the names ``--icount``'s layers mode replaces).
MODULES = {"langgraph": ("castor.frameworks.langchain",), "langgraph-once": ("castor.frameworks.langchain",),
           "pydantic-ai": ("castor.frameworks.pydantic_ai",),
           "openai-agents": ("castor.frameworks.openai_agents",), "smolagents": ("castor.frameworks.smolagents",),
           "smolagents-once": ("castor.frameworks.smolagents",),
           "crewai": ("castor.frameworks._crewai_llm", "castor.frameworks.crewai")}
# The cases whose scripted model can wait (--latency): CrewAI's is the one left.
WAITING = {"langgraph", "langgraph-once", "pydantic-ai", "openai-agents", "smolagents", "smolagents-once"}


async def _direct_step(request: Any, model: str, invoke: Callable[[Any], Awaitable[Any]], **_: Any) -> Any:
    return await invoke(request)


async def _direct_tool(name: str, arguments: dict[str, Any]) -> Any:
    return await search(**arguments)  # the frameworks' tools are search / _sync_search: the same answer


async def _layers_only(name: str, run: Callable[[], Awaitable[Any]]) -> float:
    """``run`` timed with the guard's model step and tool call short-circuited (no syscall)."""
    import importlib

    replaced = {"model_step": _direct_step, "call_tool": _direct_tool}
    saved: list[tuple[Any, str, Any]] = []
    for module_name in MODULES[name]:
        module: Any = importlib.import_module(module_name)
        for attribute, stand_in in replaced.items():
            if hasattr(module, attribute):
                saved.append((module, attribute, getattr(module, attribute)))
                setattr(module, attribute, stand_in)
    missing = set(replaced) - {attribute for _, attribute, _ in saved}
    if missing:  # a guard moved its calls elsewhere: the figure would not be the layers' alone
        raise SystemExit(f"{name}: no {', '.join(sorted(missing))} in {', '.join(MODULES[name])} (bench MODULES)")
    try:
        return await _timed(run)
    finally:
        for module, attribute, original in saved:
            setattr(module, attribute, original)


async def _timed(run: Callable[[], Awaitable[Any]], wall: list[float] | None = None) -> float:
    started, clock = time.process_time(), time.perf_counter()
    await run()
    if wall is not None:
        wall.append(time.perf_counter() - clock)
    return time.process_time() - started


async def measure(name: str, steps: int, repeat: int, latency: float = 0.0) -> dict[str, float]:
    """Median seconds per step of the figures for framework ``name`` (CPU; ``*_wall``: wall clock)."""
    alone, guarded, tools = CASES[name](steps, latency) if latency else CASES[name](steps)
    kernel = Castor(tools=tools)
    figures: dict[str, list[float]] = {"alone": [], "layers": [], "embedded": [], "added": [], "replayed": [],
                                       "embedded_wall": [], "replayed_wall": []}
    for _ in range(2):  # warm up: imports, pydantic schemas, LangGraph's compilation caches
        await alone()
        await kernel.run(guarded)
    for n in range(repeat):
        cp = None

        async def live() -> None:
            nonlocal cp
            cp = await kernel.run(guarded)

        if n % 2:  # alternately first and second: neither side of a pair always follows the other
            figures["embedded"].append(await _timed(live, figures["embedded_wall"]))
            figures["alone"].append(await _timed(alone))
        else:
            figures["alone"].append(await _timed(alone))
            figures["embedded"].append(await _timed(live, figures["embedded_wall"]))
        figures["added"].append(figures["embedded"][-1] - figures["alone"][-1])  # paired: the same moment's load

        async def layers() -> None:
            await kernel.run(guarded)

        figures["layers"].append(await _layers_only(name, layers))
        assert cp is not None and cp.status == "COMPLETED" and len(cp.syscall_log) == 2 * steps + 1
        fork = cp.fork(at_step=len(cp.syscall_log))

        async def replay(fork: Any = fork) -> None:
            await kernel.run(guarded, checkpoint=fork)

        figures["replayed"].append(await _timed(replay, figures["replayed_wall"]))
    result = {k: statistics.median(v) / steps for k, v in figures.items()}
    if repeat >= 4:
        low, _, high = statistics.quantiles(figures["added"], n=4)
        result["added_low"], result["added_high"] = low / steps, high / steps
    return result


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--only", choices=sorted(CASES))
    parser.add_argument("--latency", type=float, default=0.0, help="seconds the scripted model takes to answer")
    parser.add_argument("--icount", action="store_true", help="instructions per step under callgrind (_fw_icount)")
    parser.add_argument("--tree", action="append", default=[], help="with --icount: a baseline checkout first")
    args = parser.parse_args()
    if args.icount:
        import _fw_icount

        _fw_icount.main([*(["--only", args.only] if args.only else []), "--steps", str(args.steps),
                         *[arg for tree in args.tree for arg in ("--tree", tree)]])
        return
    print(f"{args.steps}-step scripted run, median of {args.repeat}; per step (a model call and a tool call)"
          + (f"; the model answers in {args.latency * 1e3:g} ms" if args.latency else ""))
    print(f"{'framework':<14} {'alone':>10} {'layers':>10} {'embedded':>10} {'added':>10} {'spread':>14} "
          f"{'replayed':>10} {'replay/live':>12}")
    for name in [args.only] if args.only else sorted(CASES):
        if args.latency and name not in WAITING:
            print(f"{name:<14} no --latency for this framework's scripted model yet")
            continue
        try:
            f = asyncio.run(measure(name, args.steps, args.repeat, args.latency))
        except ImportError as missing:  # crewai is not in the dev extra (see castor/frameworks/crewai.py)
            print(f"{name:<14} not installed ({missing.name})")
            continue
        added = f["added"]
        spread = f"{f['added_low'] * 1e6:.0f}…{f['added_high'] * 1e6:.0f}µs" if "added_low" in f else "-"
        print(f"{name:<14} {f['alone'] * 1e6:>8.0f}µs {f['layers'] * 1e6:>8.0f}µs {f['embedded'] * 1e6:>8.0f}µs "
              f"{added * 1e6:>8.0f}µs {spread:>14} "
              f"{f['replayed'] * 1e6:>8.0f}µs {f['replayed'] / f['embedded']:>11.0%}")
        if args.latency:  # the model's wait is no CPU time: the step as the run sees it is wall-clock time
            live, replayed = f["embedded_wall"], f["replayed_wall"]
            print(f"{'':<14} wall clock: live {live * 1e3:.2f} ms/step, replayed {replayed * 1e3:.2f} ms/step, "
                  f"replayed/live {replayed / live:.1%}; from CPU time, replayed / (live + the model's wait) "
                  f"{f['replayed'] / (f['embedded'] + args.latency):.1%}")


if __name__ == "__main__":
    main()
