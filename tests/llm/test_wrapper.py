"""castor-kernel 0.5.1's LLMSyscall and StreamingLLMSyscall (castor.llm.wrapper) in their documented uses:
a journaled tool, a streamed model call charged per call, and a stream stopped part way charged per chunk
received with its text kept, in the run's journal (so a resume keeps the charge and a fork drops it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from castor import Castor, LLMSyscall, StreamingLLMSyscall, SyscallGate, UnsupportedError
from castor.llm import Scripted
from castor.registry import ToolRegistry


async def test_llm_syscall_in_a_registry_runs_as_a_journaled_charged_tool_and_replays() -> None:
    calls: list[dict[str, Any]] = []

    async def ask(model: str, prompt: str) -> str:
        calls.append({"model": model, "prompt": prompt})
        return f"{model} says hi to {prompt}"

    registry = ToolRegistry()
    llm = LLMSyscall(registry, call_fn=ask, consumes="api_usd", cost_per_use=0.5)
    assert registry.has_tool("llm_inference")
    kernel = Castor(gate=SyscallGate(registry))

    async def agent(proxy: Any) -> str:
        return str(await llm.infer(proxy, model="m", prompt="you"))

    cp = await kernel.run(agent, budgets={"api_usd": 5.0})
    assert cp.result == "m says hi to you"
    assert cp.syscall_log[0].request == {"tool_name": "llm_inference", "arguments": {"model": "m", "prompt": "you"}}
    assert cp.budget_used("api_usd") == 0.5
    replayed = await kernel.run(agent, checkpoint=cp.fork(at_step=1))
    assert replayed.result == cp.result and len(calls) == 1  # served from the journal


async def test_llm_syscall_in_tools_is_refused_when_its_budget_is_spent() -> None:
    async def ask(prompt: str) -> str:
        return "answer"

    llm = LLMSyscall(call_fn=ask, consumes="api_usd", cost_per_use=2.0, tool_name="oracle")
    kernel = Castor(tools=[llm])
    assert kernel.gate.has_tool("oracle")

    async def agent() -> list[Any]:
        return [await llm.infer(prompt="a"), await llm.infer(prompt="b")]

    cp = await kernel.run(agent, budgets={"api_usd": 3.0})
    assert cp.result[0] == "answer"
    assert cp.result[1]["status"] == "INSUFFICIENT_CAPABILITY"


async def test_castor_llm_is_the_kernels_model_as_0_5_1_code_reads_it() -> None:
    async def ask(**kwargs: Any) -> str:
        return "42"

    kernel = Castor(llm=ask, llm_cost=2.0)
    assert isinstance(kernel.llm, LLMSyscall) and kernel.gate.has_tool("llm_inference")

    async def agent(proxy: Any) -> Any:
        return await kernel.llm.infer(proxy, prompt="question")

    cp = await kernel.run(agent, budgets={"api": 10.0})
    assert cp.result == "42" and cp.budget_used("api") == 2.0
    assert Castor().llm is None
    model = Scripted(["x"])
    assert Castor(llm=model).llm is model


class Source:
    """A 0.5.1 stream function: yields ``chunks``; then waits to be preempted (``hang``) or raises (``fail``)."""

    def __init__(self, chunks: list[str], *, hang: bool = False, fail: bool = False) -> None:
        self.chunks = chunks
        self.hang = hang
        self.fail = fail
        self.calls = 0
        self.sent = asyncio.Event()

    async def __call__(self, model: str, prompt: str) -> AsyncIterator[str]:
        self.calls += 1
        for chunk in self.chunks:
            yield chunk
        self.sent.set()
        if self.fail:
            raise ConnectionError("stream broke")
        if self.hang:
            await asyncio.Event().wait()


async def test_a_streamed_call_returns_the_whole_text_journals_it_once_and_replays_without_the_model() -> None:
    source = Source(["Hello", " ", "World"])
    seen: list[tuple[str, str]] = []
    llm = StreamingLLMSyscall(
        stream_fn=source, consumes="api_usd", cost_per_use=1.0, cost_per_token=0.1,
        on_chunk=lambda chunk, text: seen.append((chunk, text)),
    )
    kernel = Castor(tools=[llm])

    async def agent(proxy: Any) -> Any:
        return await llm.infer(proxy, model="m", prompt="hi")

    cp = await kernel.run(agent, budgets={"api_usd": 10.0})
    assert cp.result == "Hello World"
    assert seen == [("Hello", "Hello"), (" ", "Hello "), ("World", "Hello World")]
    assert [r.request["tool_name"] for r in cp.syscall_log] == ["model:llm_inference_streaming"]
    assert cp.syscall_log[0].response["text"] == "Hello World"
    assert cp.budget_used("api_usd") == 1.0  # a whole answer costs cost_per_use, not per chunk
    replayed = await kernel.run(agent, checkpoint=cp.fork(at_step=1))
    assert replayed.result == "Hello World" and source.calls == 1 and len(seen) == 3  # no model, no callbacks


async def test_a_stream_preempted_from_its_callback_pays_per_chunk_keeps_its_text_and_resumes_adapted() -> None:
    source = Source(["I will ", "delete /prod", " now"], hang=True)
    tasks: list[Any] = []

    def guard(chunk: str, text: str) -> None:
        if "delete /prod" in text:
            kernel.preempt(tasks[0], "POLICY", {"why": "danger"})

    llm = StreamingLLMSyscall(stream_fn=source, consumes="api_usd", cost_per_use=1.0, cost_per_token=0.25,
                              on_chunk=guard)
    kernel = Castor(tools=[llm], store="memory://")

    async def agent(proxy: Any) -> Any:
        context = proxy.preemption_context
        if context:
            return {"saw": context["partial_work"], "reason": context["reason"]}
        return await llm.infer(proxy, model="m", prompt="plan")

    tasks.append(await kernel.run_async(agent, budgets={"api_usd": 5.0}, pid="guarded"))
    cp = await tasks[0]
    assert cp.status == "PREEMPTED" and cp.preemption_reason == "POLICY"
    assert cp.partial_work == "I will delete /prod"  # what was received, up to the chunk that stopped it
    assert cp.syscall_log == []  # the interrupted call is not journaled: a resumed run calls again
    assert cp.budget_used("api_usd") == 0.5  # 2 chunks x 0.25, not the flat 1.0, not refunded to 0
    assert cp.failures[-1].charged["api_usd"] == 0.5
    stored = await kernel.aload("guarded")
    assert stored.budget_used("api_usd") == 0.5  # kept in the store's journal, not only in memory
    cp.status = "RUNNING"  # as 0.5.1's example does before resuming
    resumed = await kernel.run(agent, checkpoint=cp)
    assert resumed.result == {"saw": "I will delete /prod", "reason": "POLICY"}
    assert resumed.budget_used("api_usd") == 0.5  # the resumed run's budget still holds the partial charge


async def test_a_failed_stream_pays_per_chunk_capped_at_the_call_and_a_fork_drops_that_charge() -> None:
    source = Source([f"t{i} " for i in range(30)], fail=True)
    llm = StreamingLLMSyscall(stream_fn=source, consumes="api_usd", cost_per_use=1.0, cost_per_token=0.1)

    async def ask() -> Any:
        return await llm.infer(model="m", prompt="many")

    kernel = Castor(tools=[llm])
    with pytest.raises(ConnectionError):
        await kernel.run(ask, budgets={"api_usd": 10.0}, pid="broke")
    cp = await kernel.aload("broke")
    assert cp.status == "FAILED" and cp.partial_work is not None and cp.partial_work.startswith("t0 t1 ")
    assert cp.budget_used("api_usd") == pytest.approx(1.0)  # 30 x 0.1 = 3.0, capped at cost_per_use
    assert "partial text" in cp.failures[-1].message
    assert cp.fork(at_step=0).budget_used("api_usd") == 0.0  # a fork keeps its prefix's usage only


async def test_without_cost_per_token_a_stopped_stream_pays_nothing_of_its_resource() -> None:
    source = Source(["partial"], hang=True)
    llm = StreamingLLMSyscall(stream_fn=source, consumes="api_usd", cost_per_use=1.0)
    kernel = Castor(tools=[llm])

    async def agent() -> Any:
        return await llm.infer(model="m", prompt="x")

    task = await kernel.run_async(agent, budgets={"api_usd": 5.0})
    await source.sent.wait()
    assert not task.done
    kernel.preempt(task, "stop")
    cp = await task
    assert cp.partial_work == "partial" and cp.budget_used("api_usd") == 0.0


async def test_a_streamed_call_its_budget_cannot_cover_is_refused_before_the_model() -> None:
    source = Source(["never"])
    llm = StreamingLLMSyscall(stream_fn=source, consumes="api_usd", cost_per_use=2.0)

    async def agent() -> Any:
        return await llm.infer(model="m", prompt="x")

    cp = await Castor(tools=[llm]).run(agent, budgets={"api_usd": 1.0})
    assert cp.result["status"] == "INSUFFICIENT_CAPABILITY" and "api_usd" in cp.result["feedback_message"]
    assert source.calls == 0


def test_the_wrappers_need_their_model_function() -> None:
    with pytest.raises(TypeError, match="call_fn"):
        LLMSyscall()
    with pytest.raises(TypeError, match="stream_fn"):
        StreamingLLMSyscall()


async def test_a_charge_outside_any_call_is_refused_naming_what_charges_a_stopped_stream() -> None:
    async def agent(proxy: Any) -> None:
        proxy.charge_partial("api_usd", 0.3)

    with pytest.raises(UnsupportedError, match=r"charge_partial.*StreamingLLMSyscall\(cost_per_token"):
        await Castor().run(agent)
