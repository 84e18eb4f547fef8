"""Agent styles and patterns: parallel calls, the legacy proxy, sync tools, child agents, preemption."""

from __future__ import annotations

import asyncio
import threading
import time

from castor import AgentCheckpoint, AgentRegistry, Castor, castor_agent
from castor.lib import join, map_reduce, parallel, spawn, tool

from .conftest import CALLS, delete_file, search


async def nap(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


async def test_parallel_runs_concurrently_in_call_order() -> None:
    async def agent() -> list[object]:
        return await parallel(("nap", {"seconds": 0.3}), ("nap", {"seconds": 0.1}), ("nap", {"seconds": 0.2}))

    kernel = Castor(tools=[nap])
    started = time.perf_counter()
    cp = await kernel.run(agent)
    assert time.perf_counter() - started < 0.55  # one by one would take 0.6 s
    assert cp.result == [0.3, 0.1, 0.2]
    assert [r.arguments["seconds"] for r in cp.syscall_log] == [0.3, 0.1, 0.2]
    again = await kernel.run(agent, checkpoint=cp)  # replays at the same positions
    assert again.result == [0.3, 0.1, 0.2]


async def test_map_reduce() -> None:
    async def shout(item: str) -> str:
        return item.upper()

    async def glue(items: list[str]) -> str:
        return "+".join(items)

    async def agent() -> object:
        return await map_reduce(["a", "b"], "shout", "glue")

    assert (await Castor(tools=[shout, glue]).run(agent)).result == "A+B"


def test_a_legacy_agent_is_told_by_its_signature_as_inspect_reads_it() -> None:
    import functools
    import inspect

    from castor.kernel.runner import takes_proxy

    def by_inspect(agent: object) -> bool:
        params = [p for p in inspect.signature(agent).parameters.values()  # type: ignore[arg-type]
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
        return len(params) == 1

    async def proxy_only(proxy): ...  # type: ignore[no-untyped-def]
    async def proxy_and_default(proxy, x=1): ...  # type: ignore[no-untyped-def]
    async def positional_only(x, /, y): ...  # type: ignore[no-untyped-def]
    async def one_positional_only(x, /): ...  # type: ignore[no-untyped-def]
    async def keyword_only(x, *args, k): ...  # type: ignore[no-untyped-def]
    async def defaults_only(x=1, y=2): ...  # type: ignore[no-untyped-def]
    async def nothing() -> None: ...

    @functools.wraps(nothing)
    async def wraps_nothing(proxy): ...  # type: ignore[no-untyped-def]

    def with_signature(a, b): ...  # type: ignore[no-untyped-def]

    with_signature.__signature__ = inspect.signature(proxy_only)  # type: ignore[attr-defined]
    agents = [proxy_only, proxy_and_default, positional_only, one_positional_only, keyword_only, defaults_only,
              nothing, wraps_nothing, with_signature, lambda proxy: None, lambda: None]
    assert [takes_proxy(a) for a in agents] == [by_inspect(a) for a in agents]
    assert [takes_proxy(a) for a in agents] == [True, True, False, True, True, False, False, False, True, True,
                                                False]


async def test_legacy_proxy_agent() -> None:
    async def agent(proxy: object) -> list[object]:
        return [
            await proxy.syscall("search", {"query": "a"}),  # type: ignore[attr-defined]
            await proxy.syscall("search", query="b"),  # type: ignore[attr-defined]
            await proxy.search(query="c"),  # type: ignore[attr-defined]
        ]

    cp = await Castor(tools=[search]).run(agent)
    assert cp.result == [["Result for: a"], ["Result for: b"], ["Result for: c"]]


async def test_sync_tools_do_not_block_the_event_loop() -> None:
    threads: list[str] = []

    def blocking(seconds: float) -> str:
        threads.append(threading.current_thread().name)
        time.sleep(seconds)
        return "slept"

    ticks: list[float] = []

    async def ticker() -> None:
        for _ in range(5):
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.02)

    async def agent() -> object:
        return await tool("blocking", seconds=0.2)

    background = asyncio.ensure_future(ticker())
    cp = await Castor(tools=[blocking]).run(agent)
    await background
    assert cp.result == "slept" and threads[0] != threading.current_thread().name
    assert ticks[-1] - ticks[0] < 0.19  # the ticker kept running while the tool slept


async def test_preempt_refunds_the_interrupted_call_and_resumes() -> None:
    gate = asyncio.Event()
    waiting = asyncio.Event()
    seen: list[object] = []

    async def wait_for(label: str) -> str:
        waiting.set()
        await gate.wait()
        return label

    async def agent(proxy: object) -> str:
        seen.append(proxy.preemption_context)  # type: ignore[attr-defined]
        await tool("search", query="first")
        await tool("wait_for", label="second")
        return "finished"

    kernel = Castor(tools=[search, wait_for])
    task = await kernel.run_async(agent, budgets={"api": 10})
    await asyncio.wait_for(waiting.wait(), 5)  # the second call is running
    assert not task.done
    kernel.preempt(task, "operator needs the slot", {"priority": 1})
    cp = await task
    assert cp.status == "PREEMPTED" and cp.preemption_reason == "operator needs the slot"
    assert cp.preemption_payload == {"priority": 1}
    assert len(cp.syscall_log) == 1 and cp.budget_used("api") == 1
    gate.set()
    cp = await kernel.run(agent, checkpoint=cp)
    assert cp.status == "COMPLETED" and CALLS["search"] == 1
    assert seen[0] is None and seen[1]["reason"] == "operator needs the slot"  # type: ignore[index]


async def test_children_get_a_delegated_budget_and_return_the_rest() -> None:
    registry = AgentRegistry()

    @castor_agent("researcher", registry=registry)
    async def researcher() -> str:
        await tool("search", query="a")
        await tool("search", query="b")
        return "found"

    async def parent() -> object:
        handle = await spawn("researcher", capabilities={"api": 5})
        return handle, await join(handle)

    kernel = Castor(tools=[search], agent_registry=registry)
    cp = await kernel.run(parent, budgets={"api": 10}, pid="boss")
    assert cp.result == ("boss::researcher-0", "found")
    join_record = cp.syscall_log[-1]
    child = join_record.child_checkpoint
    assert isinstance(child, AgentCheckpoint) and child.parent_pid == "boss" and child.budget_used("api") == 2
    assert cp.budget_used("api") == 2  # 5 delegated, 3 returned on join


async def test_child_approvals_reach_the_child() -> None:
    registry = AgentRegistry()

    @castor_agent(registry=registry)
    async def janitor() -> object:
        return await tool("delete_file", path="/tmp/x")

    async def parent() -> object:
        return await join(await spawn("janitor"))

    kernel = Castor(tools=[delete_file], destructive=["delete_file"], agent_registry=registry)
    cp = await kernel.run(parent)
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "delete_file"
    await kernel.approve(cp)
    cp = await kernel.run(parent, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == "Deleted /tmp/x" and CALLS["delete_file"] == 1

    cp = await kernel.run(parent)
    kernel.reject(cp, "not today")
    cp = await kernel.run(parent, checkpoint=cp)
    assert cp.result == {"status": "HITL_REJECTED", "human_feedback": "not today"}


async def test_child_handles_number_from_zero() -> None:
    registry = AgentRegistry()

    @castor_agent("crawler", registry=registry)
    async def crawler() -> str:
        return "crawled"

    async def boss() -> object:
        handles = [await spawn("crawler"), await spawn("crawler")]
        return [(h, await join(h)) for h in handles]

    cp = await Castor(tools=[], agent_registry=registry).run(boss, pid="boss")
    assert cp.result == [("boss::crawler-0", "crawled"), ("boss::crawler-1", "crawled")]  # as castor-kernel 0.5.1
