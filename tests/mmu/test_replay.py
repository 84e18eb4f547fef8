"""Evictions replay exactly: a fork or a resumed run rebuilds, step for step, the context the live run had,
because the journal (not the budget in force now) decides where messages left. castor-kernel 0.5.1 did not
replay evictions: after a fork its context differed from the live run's."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from castor import Castor, ReplayDivergenceError
from castor.lib import memory, tool
from castor.llm import Scripted
from castor.mmu import MMU, InMemoryDriver, SQLiteDriver
from castor.mmu.core import PAGE_OUT_TOOL, SUMMARY_SYSTEM

REPLIES = [f"reply {i} " + " ".join(["word"] * 12) for i in range(6)]
TOPICS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]


async def chat_agent() -> list[str]:
    mem = memory()
    mem.add("system", "You answer briefly.")
    for topic in TOPICS:
        mem.add("user", f"tell me about {topic} " + " ".join(["detail"] * 15))
        await mem.complete()
    hits = await mem.search("alpha")
    return [h["id"] for h in hits]


def requests(cp: Any) -> dict[int, Any]:
    """The model requests of a run, by step."""
    return {i: r.arguments["request"] for i, r in enumerate(cp.syscall_log) if r.tool_name.startswith("model:")}


async def live_run() -> Any:
    cp = await Castor(llm=Scripted(REPLIES), mmu=MMU(budget=120)).run(chat_agent)
    assert cp.status == "COMPLETED", cp.error
    assert [r.tool_name for r in cp.syscall_log].count(PAGE_OUT_TOOL) >= 3
    return cp


def model_steps_after_an_eviction(cp: Any) -> list[int]:
    first_out = next(i for i, r in enumerate(cp.syscall_log) if r.tool_name == PAGE_OUT_TOOL)
    return [i for i in requests(cp) if i > first_out]


async def test_a_fork_after_an_eviction_sees_the_context_the_live_run_had_at_that_step() -> None:
    live = await live_run()
    steps = model_steps_after_an_eviction(live)
    assert len(steps) >= 3
    for at in steps:
        fork = live.fork(at_step=at)
        replies = REPLIES[sum(1 for i in requests(live) if i < at):]
        # Another budget in force now: it must not change what the journal says left before the fork.
        model = Scripted(replies)
        cp = await Castor(llm=model, mmu=MMU(budget=10_000, driver=InMemoryDriver())).run(chat_agent, checkpoint=fork)
        assert cp.status == "COMPLETED", cp.error
        assert model.calls[0] == requests(live)[at], f"fork at step {at}: the context differs from the live run's"


async def test_a_fork_with_the_same_mmu_repeats_the_live_run_and_finds_what_its_prefix_paged_out() -> None:
    live = await live_run()
    for at in model_steps_after_an_eviction(live):
        replies = REPLIES[sum(1 for i in requests(live) if i < at):]
        driver = InMemoryDriver()  # never saw the prefix's page-outs: replay stores them again
        cp = await Castor(llm=Scripted(replies), mmu=MMU(budget=120, driver=driver)).run(
            chat_agent, checkpoint=live.fork(at_step=at)
        )
        assert [r.request for r in cp.syscall_log] == [r.request for r in live.syscall_log]
        assert cp.result == live.result and cp.result  # search_memory found alpha in the fork too
        assert cp.context_history == live.context_history


async def test_without_replaying_evictions_a_fork_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    # The control: a fork that keeps the end state of the live context (0.5.1's behaviour) sees another
    # context than the live run had; the test above would fail without the MMU's replay.
    live = await live_run()
    at = model_steps_after_an_eviction(live)[0]
    monkeypatch.setattr(MMU, "start", lambda self, cp: None)
    with pytest.raises(ReplayDivergenceError, match="replay divergence at step 0"):
        await Castor(llm=Scripted(REPLIES), mmu=MMU(budget=120)).run(chat_agent, checkpoint=live.fork(at_step=at))


def wipe(path: str) -> str:
    return f"wiped {path}"


async def suspending_agent() -> Any:
    mem = memory()
    mem.add("system", "You clean up.")
    for topic in TOPICS[:4]:
        mem.add("user", f"note on {topic} " + " ".join(["detail"] * 15))
        await mem.complete()
    await tool("wipe", path="/tmp/old")
    mem.add("user", "what did we say about alpha?")
    hits = await mem.search("alpha")
    await mem.page_in([h["id"] for h in hits])
    await mem.complete()
    return mem.messages


async def test_a_run_resumed_in_a_new_kernel_rebuilds_its_context_and_its_memory(tmp_path: Any) -> None:
    store = f"sqlite:///{tmp_path}/runs.db"
    first = Scripted(REPLIES)
    kernel = Castor(tools=[wipe], destructive=["wipe"], store=store, llm=first,
                    mmu=MMU(budget=120, driver=SQLiteDriver(tmp_path / "a.db")))
    cp = await kernel.run(suspending_agent)
    assert cp.status == "SUSPENDED_FOR_HITL"
    evicted = [r for r in cp.syscall_log if r.tool_name == PAGE_OUT_TOOL]
    assert evicted and len(first.calls) == 4
    await kernel.approve(cp)

    # Another process: an empty memory driver, a model that has answered nothing yet.
    second = Scripted([REPLIES[4]])
    other = Castor(tools=[wipe], destructive=["wipe"], store=store, llm=second,
                   mmu=MMU(budget=120, driver=SQLiteDriver(tmp_path / "b.db")))
    done = await other.run(suspending_agent, checkpoint=await other.aload(cp.pid))
    assert done.status == "COMPLETED", done.error
    assert len(second.calls) == 1  # the journaled model steps were not asked again
    asked = [m["content"][:13] for m in second.calls[0]["messages"]]
    # The replayed page-outs left the context as the live run had it; alpha came back by page-in (found
    # in a driver that never saw the page-out: the replay stored it again).
    assert asked.count("note on alpha") == 1 and asked[-1] == "note on alpha"

    # The same run uninterrupted, for comparison: the resumed one asked the model the same thing.
    straight = Castor(tools=[wipe], store=f"sqlite:///{tmp_path}/straight.db", llm=Scripted(REPLIES),
                      mmu=MMU(budget=120))
    whole = await straight.run(suspending_agent)
    assert whole.status == "COMPLETED", whole.error
    assert [r.request for r in done.syscall_log] == [r.request for r in whole.syscall_log]
    assert done.context_history == whole.context_history


async def concurrent_agent() -> list[str]:
    mem = memory()
    for topic in TOPICS[:3]:
        mem.add("user", f"tell me about {topic} " + " ".join(["detail"] * 15))
    replies = await asyncio.gather(mem.complete(), mem.complete())
    return [r.text for r in replies]


async def test_concurrent_model_calls_page_out_once_and_replay_in_the_same_order() -> None:
    live = await Castor(llm=Scripted(REPLIES), mmu=MMU(budget=120)).run(concurrent_agent)
    assert live.status == "COMPLETED", live.error
    assert [r.tool_name for r in live.syscall_log] == [PAGE_OUT_TOOL, "model:scripted", "model:scripted"]
    for at in range(len(live.syscall_log) + 1):
        model = Scripted(REPLIES[max(at - 1, 0):])
        cp = await Castor(llm=model, mmu=MMU(budget=120)).run(concurrent_agent, checkpoint=live.fork(at_step=at))
        assert [r.request for r in cp.syscall_log] == [r.request for r in live.syscall_log]
        assert cp.result == live.result


def answer(request: dict[str, Any]) -> str:
    """A model whose answer is a function of the request: the same request, the same answer."""
    messages = request["messages"]
    if messages[0]["content"] == SUMMARY_SYSTEM:
        return "summary of " + " ".join(line.split(" ")[4] for line in messages[1]["content"].splitlines()
                                        if line.startswith("user: tell me about"))
    return f"reply to {len(messages)} messages " + " ".join(["word"] * 12)


async def test_a_fork_replays_the_summary_from_the_journal_without_asking_the_model() -> None:
    def mmu() -> MMU:
        return MMU(budget=150, summarize=True, summary_max_tokens=20)

    live = await Castor(llm=Scripted([answer] * 30), mmu=mmu()).run(chat_agent)
    assert live.status == "COMPLETED", live.error
    outs = [i for i, r in enumerate(live.syscall_log) if r.tool_name == PAGE_OUT_TOOL]
    assert len(outs) >= 2 and all(live.syscall_log[i].arguments["summarize"] for i in outs)
    at = outs[1] + 2  # after the second page-out and its summary
    model = Scripted([answer] * 30)
    cp = await Castor(llm=model, mmu=mmu()).run(chat_agent, checkpoint=live.fork(at_step=at))
    assert [r.request for r in cp.syscall_log] == [r.request for r in live.syscall_log]
    assert model.calls[0] == requests(live)[at]  # the first call it answered: the live run's, summary included
    summaries = [m for m in model.calls[0]["messages"] if m["content"].startswith("[Summary of earlier conversation]")]
    assert len(summaries) == 1 and summaries[0]["content"].split(" ")[-2:-1] == ["of"]
