"""castor-kernel 0.5.1 code: ``Castor(lodge=MMU(registry, driver, watermark=...))``, messages the agent (or
its host) keeps in ``checkpoint.context_history``, eviction before ``llm_inference``, ``search_memory`` as
a tool taking the pid; here eviction also replays, so a resumed run keeps the live run's context."""

from __future__ import annotations

from typing import Any

import pytest

from castor import (
    MMU,
    AgentCheckpoint,
    CapabilityManager,
    Castor,
    CastorMessage,
    MMUProtocol,
    SyscallGate,
    UnsupportedError,
    castor_tool,
)
from castor.mmu.core import PAGE_OUT_TOOL, SEARCH_MEMORY_TOOL
from castor.mmu.drivers.mock_driver import InMemoryDriver
from castor.mmu.token_counter import CharCountEstimator
from castor.registry import ToolRegistry


def checkpoint(messages: list[CastorMessage]) -> AgentCheckpoint:
    caps = CapabilityManager().create_capabilities({"api": 100.0})
    cp = AgentCheckpoint(pid="lodge-integ-001", status="RUNNING", agent_function_name="agent_fn", capabilities=caps)
    cp.context_history = list(messages)
    return cp


MESSAGES = [
    CastorMessage(role="system", content="You are helpful.", pinned=True, token_count=10),
    CastorMessage(role="user", content="Tell me about battery technology", token_count=30),
    CastorMessage(role="assistant", content="Battery tech is advancing rapidly", token_count=25),
]


def kernel_051(registry: ToolRegistry, driver: Any, calls: list[str], **options: Any) -> Castor:
    lodge = MMU(registry, driver, watermark=50, consumes="system", cost_per_use=0.0)

    async def fake_llm(model: str, prompt: str) -> str:
        calls.append(prompt)
        return f"LLM response for: {prompt[:30]}"

    return Castor(gate=SyscallGate(registry), llm=fake_llm, lodge=lodge, **options)


async def test_lodge_evicts_before_llm_inference_and_search_memory_finds_it() -> None:
    registry, driver, calls = ToolRegistry(), InMemoryDriver(), []
    kernel = kernel_051(registry, driver, calls)
    assert isinstance(kernel.mmu, MMUProtocol) and kernel.mmu.watermark == 50
    assert SEARCH_MEMORY_TOOL in SyscallGate(registry).list_tools()

    async def agent_fn(proxy: Any) -> str:
        await proxy.syscall("llm_inference", {"model": "gpt-4", "prompt": "Analyze findings"})
        return await proxy.syscall(SEARCH_MEMORY_TOOL, {"query": "battery", "pid": proxy.checkpoint.pid})

    result = await kernel.run(agent_fn, checkpoint=checkpoint(MESSAGES))
    assert result.status == "COMPLETED", result.error
    assert [r.tool_name for r in result.syscall_log] == [PAGE_OUT_TOOL, "llm_inference", SEARCH_MEMORY_TOOL]
    assert [m.content for m in result.context_history] == ["You are helpful.", "Battery tech is advancing rapidly"]
    assert "battery technology" in result.result.lower()
    assert "battery" in (await driver.search("battery", pid="lodge-integ-001")).lower()  # 0.5.1's driver API
    assert calls == ["Analyze findings"]


async def test_a_resumed_051_run_keeps_the_live_context_and_does_not_evict_again() -> None:
    registry, driver, calls = ToolRegistry(), InMemoryDriver(), []

    @castor_tool(registry=registry, destructive=True, requires_hitl=True)
    def dangerous_action(action: str) -> str:
        return f"executed: {action}"

    kernel = kernel_051(registry, driver, calls)

    async def agent_fn(proxy: Any) -> list[str]:
        await proxy.syscall("llm_inference", {"model": "gpt-4", "prompt": "plan"})
        await proxy.syscall("dangerous_action", {"action": "deploy"})
        return [m.content for m in proxy.checkpoint.context_history]

    cp = await kernel.run(agent_fn, checkpoint=checkpoint(MESSAGES))
    assert cp.status == "SUSPENDED_FOR_HITL"
    live_context = list(cp.context_history)
    await kernel.approve(cp)
    done = await kernel.run(agent_fn, checkpoint=cp)
    assert done.status == "COMPLETED", done.error
    assert done.result == [m.content for m in live_context] == ["You are helpful.", "Battery tech is advancing rapidly"]
    assert calls == ["plan"]  # the model is not called again on replay
    assert [r.tool_name for r in done.syscall_log].count(PAGE_OUT_TOOL) == 1


def test_051_helpers_and_a_custom_mmu_is_refused() -> None:
    mmu = MMU(ToolRegistry(), InMemoryDriver(), token_counter=CharCountEstimator(), watermark=20)
    cp = checkpoint([
        CastorMessage(role="system", content="sys", pinned=True, token_count=10),
        CastorMessage(role="user", content="old", token_count=15),
        CastorMessage(role="user", content="new", token_count=15),
        CastorMessage(role="user", content="a" * 40),
    ])
    assert mmu.total_tokens(cp) == 50
    forty = CastorMessage(role="user", content="a" * 40)
    assert MMU(ToolRegistry(), InMemoryDriver()).tokens(forty) == 10  # 0.5.1's form counts as 0.5.1 did
    assert MMU().tokens(forty) == 14  # Castor's offline estimate errs high
    assert [m.content for m in mmu._select_victims(cp)] == ["old", "new"]
    message = CastorMessage(role="user", content="t", token_count=3)
    assert CastorMessage.model_validate(message.model_dump()) == message

    class Custom:
        kernel_tool_names = frozenset[str]()

        async def check_and_evict(self, proxy: Any, checkpoint: AgentCheckpoint) -> None:
            pass

    with pytest.raises(UnsupportedError, match=r"takes castor\.MMU\(\.\.\.\)"):
        Castor(tools=[], lodge=Custom())
