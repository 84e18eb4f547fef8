"""The fleet's context memory: pages in Redis, so the coordinator that drives a run next (another kernel,
another driver object, same Redis) rebuilds its context and finds what an earlier one paged out."""

from __future__ import annotations

from typing import Any

from castor.fleet.scheduler.coordinator import Coordinator, CoordinatorConfig

from castor import Castor
from castor.backends.redis import redis_backend
from castor.checkpoint import RunSpec
from castor.lib import memory, tool
from castor.llm import Scripted
from castor.mmu import MMU
from castor.mmu.core import PAGE_OUT_TOOL
from castor.mmu.drivers.redis import RedisDriver

REPLIES = [f"reply {i} " + " ".join(["word"] * 10) for i in range(4)]


def wipe(path: str) -> str:
    return f"wiped {path}"


async def agent() -> Any:
    mem = memory()
    mem.add("system", "You clean up.")
    for topic in ("alpha", "bravo", "charlie"):
        mem.add("user", f"note on {topic} " + " ".join(["detail"] * 15))
        await mem.complete()
    await tool("wipe", path="/tmp/old")
    return [h["id"] for h in await mem.search("alpha")], mem.messages


async def test_a_run_taken_over_by_another_kernel_finds_its_pages_in_redis(redis_url: str, redis_prefix: str) -> None:
    backend = redis_backend(redis_url, prefix=redis_prefix)
    first_driver = RedisDriver(redis_url, prefix=redis_prefix)
    first = Castor(tools=[wipe], destructive=["wipe"], store=backend, llm=Scripted(REPLIES),
                   mmu=MMU(budget=100, driver=first_driver))
    cp = await first.run(agent, pid="fleet-mmu-1")
    assert cp.status == "SUSPENDED_FOR_HITL"
    assert [r.tool_name for r in cp.syscall_log].count(PAGE_OUT_TOOL) == 2
    stored = await first_driver.load_pages("fleet-mmu-1")
    assert stored and stored[0].content.startswith("note on alpha")
    await first.approve(cp)

    second = Castor(tools=[wipe], destructive=["wipe"], store=backend, llm=Scripted([]),
                    mmu=MMU(budget=100, driver=RedisDriver(redis_url, prefix=redis_prefix)))
    done = await second.run(agent, checkpoint=await second.aload("fleet-mmu-1"))
    assert done.status == "COMPLETED", done.error
    hits, messages = done.result
    assert hits == [stored[0].id]
    assert [m["content"][:12] for m in messages] == [
        "You clean up", "reply 1 word", "note on char", "reply 2 word",
    ]
    await first_driver.drop("fleet-mmu-1")
    assert await first_driver.load_pages("fleet-mmu-1") == []
    await first_driver.close()
    await backend.close()


async def test_a_coordinator_with_a_context_budget_gives_its_kernels_a_redis_mmu(
    redis_url: str, redis_prefix: str
) -> None:
    backend = redis_backend(redis_url, prefix=redis_prefix)
    plain = Coordinator(CoordinatorConfig(url=redis_url, prefix=redis_prefix), backend)
    assert plain.kernels.kernel_for(RunSpec(agent="a:b")).mmu is None
    with_memory = Coordinator(CoordinatorConfig(url=redis_url, prefix=redis_prefix, context_budget=4000), backend)
    mmu = with_memory.kernels.kernel_for(RunSpec(agent="a:b")).mmu
    assert mmu.budget == 4000 and isinstance(mmu.driver, RedisDriver) and mmu.driver.prefix == redis_prefix
    await backend.close()
