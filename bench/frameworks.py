"""What guarding a framework's agent costs: its own loop, under Castor, and replayed from the journal.

    python bench/frameworks.py              # both frameworks, 7 repetitions; about 30 seconds
    python bench/frameworks.py --repeat 3 --steps 20 --only langgraph
    python bench/frameworks.py --latency 0.05 --repeat 3   # a model that takes 50 ms to answer, as an API does

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
  and tools are not called (the framework's loop still runs).

Times are the process's CPU time (``time.process_time``, all its threads): on a shared machine the wall
clock mostly measures the other processes. With ``--latency S`` the scripted model also waits ``S``
seconds before it answers (what a real model's API call takes, without the network): a live step then
costs what a step of the framework's loop costs in use, and the table adds the wall-clock time per
step of the live and the replayed run, whose ratio is the replay goal's figure against a real model.

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


async def search(query: str) -> str:
    """The one tool: answers at once, so the figures are the loop's and Castor's."""
    return f"found {query}"


# --- LangGraph ----------------------------------------------------------------------------------------


def langgraph_case(steps: int, latency: float = 0.0) -> Case:
    """The unguarded and the guarded agent functions, and the tools for Castor."""
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
                answer = AIMessage(content="", tool_calls=[call])
            else:
                answer = AIMessage(content="done")
            return ChatResult(generations=[ChatGeneration(message=answer)])

    tools = [lc_tool(search)]
    inputs = {"messages": [("user", "search")]}

    async def alone() -> Any:
        return await create_react_agent(Scripted(), tools).ainvoke(inputs, {"recursion_limit": 4 * steps + 10})

    async def guarded() -> Any:
        graph = guard(create_react_agent(Scripted(), tools))
        return await graph.ainvoke(inputs, {"recursion_limit": 4 * steps + 10})

    return alone, guarded, tools_of(tools)


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


CASES = {"langgraph": langgraph_case, "pydantic-ai": pydantic_ai_case}
MODULES = {"langgraph": "castor.frameworks.langchain", "pydantic-ai": "castor.frameworks.pydantic_ai"}


async def _direct_step(request: Any, model: str, invoke: Callable[[Any], Awaitable[Any]], **_: Any) -> Any:
    return await invoke(request)


async def _direct_tool(name: str, arguments: dict[str, Any]) -> Any:
    return await search(**arguments)


async def _layers_only(name: str, run: Callable[[], Awaitable[Any]]) -> float:
    """``run`` timed with the guard's model step and tool call short-circuited (no syscall)."""
    import importlib

    module: Any = importlib.import_module(MODULES[name])
    saved = module.model_step, module.call_tool
    module.model_step, module.call_tool = _direct_step, _direct_tool
    try:
        return await _timed(run)
    finally:
        module.model_step, module.call_tool = saved


async def _timed(run: Callable[[], Awaitable[Any]], wall: list[float] | None = None) -> float:
    started, clock = time.process_time(), time.perf_counter()
    await run()
    if wall is not None:
        wall.append(time.perf_counter() - clock)
    return time.process_time() - started


async def measure(name: str, steps: int, repeat: int, latency: float = 0.0) -> dict[str, float]:
    """Median seconds per step of the figures for framework ``name`` (CPU; ``*_wall``: wall clock)."""
    alone, guarded, tools = CASES[name](steps, latency)
    kernel = Castor(tools=tools)
    figures: dict[str, list[float]] = {"alone": [], "layers": [], "embedded": [], "replayed": [],
                                       "embedded_wall": [], "replayed_wall": []}
    for _ in range(2):  # warm up: imports, pydantic schemas, LangGraph's compilation caches
        await alone()
        await kernel.run(guarded)
    for _ in range(repeat):
        figures["alone"].append(await _timed(alone))
        cp = None

        async def live() -> None:
            nonlocal cp
            cp = await kernel.run(guarded)

        figures["embedded"].append(await _timed(live, figures["embedded_wall"]))

        async def layers() -> None:
            await kernel.run(guarded)

        figures["layers"].append(await _layers_only(name, layers))
        assert cp is not None and cp.status == "COMPLETED" and len(cp.syscall_log) == 2 * steps + 1
        fork = cp.fork(at_step=len(cp.syscall_log))

        async def replay(fork: Any = fork) -> None:
            await kernel.run(guarded, checkpoint=fork)

        figures["replayed"].append(await _timed(replay, figures["replayed_wall"]))
    return {k: statistics.median(v) / steps for k, v in figures.items()}


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--only", choices=sorted(CASES))
    parser.add_argument("--latency", type=float, default=0.0, help="seconds the scripted model takes to answer")
    args = parser.parse_args()
    print(f"{args.steps}-step scripted run, median of {args.repeat}; per step (a model call and a tool call)"
          + (f"; the model answers in {args.latency * 1e3:g} ms" if args.latency else ""))
    print(f"{'framework':<12} {'alone':>10} {'layers':>10} {'embedded':>10} {'added':>10} {'replayed':>10} "
          f"{'replay/live':>12}")
    for name in [args.only] if args.only else sorted(CASES):
        f = asyncio.run(measure(name, args.steps, args.repeat, args.latency))
        added = f["embedded"] - f["alone"]
        print(f"{name:<12} {f['alone'] * 1e6:>8.0f}µs {f['layers'] * 1e6:>8.0f}µs {f['embedded'] * 1e6:>8.0f}µs "
              f"{added * 1e6:>8.0f}µs "
              f"{f['replayed'] * 1e6:>8.0f}µs {f['replayed'] / f['embedded']:>11.0%}")
        if args.latency:  # the model's wait is no CPU time: the step as the run sees it is wall-clock time
            live, replayed = f["embedded_wall"], f["replayed_wall"]
            print(f"{'':<12} wall clock: live {live * 1e3:.2f} ms/step, replayed {replayed * 1e3:.2f} ms/step, "
                  f"replayed/live {replayed / live:.1%}; from CPU time, replayed / (live + the model's wait) "
                  f"{f['replayed'] / (f['embedded'] + args.latency):.1%}")


if __name__ == "__main__":
    main()
