"""What leaves the context and when: oldest first, pinned and system messages stay, tool calls leave with
their results; the summary of what leaves is a journaled, charged model step; search and page-in."""

from __future__ import annotations

from typing import Any

import pytest

from castor import Castor, CastorError, ConfigError
from castor.lib import memory, search_memory, tool
from castor.llm import Scripted
from castor.mmu import MMU, CastorMessage, InMemoryDriver
from castor.mmu.core import PAGE_IN_TOOL, PAGE_OUT_TOOL, SEARCH_MEMORY_TOOL


def words(n: int, word: str = "filler") -> str:
    return " ".join([word] * n)


def test_victims_are_the_oldest_unpinned_messages_and_tool_results_go_with_their_call() -> None:
    mmu = MMU(budget=30)
    history: list[Any] = [
        CastorMessage(role="system", content="sys", token_count=10),
        CastorMessage(role="user", content="pinned fact", pinned=True, token_count=10),
        CastorMessage(role="assistant", content="", token_count=5, tool_calls=[{"id": "c1", "name": "ls"}]),
        CastorMessage(role="tool", content="a.log b.log", token_count=5, tool_call_id="c1"),
        CastorMessage(role="user", content="old", token_count=8),
        CastorMessage(role="user", content="new", token_count=8),
        {"not": "a message"},
    ]
    assert mmu.total_tokens(history) == 46
    assert mmu.select_victims(history) == [2, 3, 4]  # 46 - 5 - 5 - 8 = 28 <= 30
    assert mmu.select_victims(history, reserve=10) == [2, 3, 4]  # the last message stays, even over budget
    answering = [*history[:4], CastorMessage(role="tool", content="more", token_count=30, tool_call_id="c1")]
    assert mmu.select_victims(answering) == []  # the call being answered stays with its results
    everything_pinned = [CastorMessage(role="user", content="x", pinned=True, token_count=99)]
    assert mmu.select_victims(everything_pinned) == []
    assert mmu.select_victims(history[:2]) == []  # under the budget


def test_bad_configuration_is_named() -> None:
    with pytest.raises(ConfigError, match="MMU budget must be a positive number of tokens, got 0"):
        MMU(budget=0)
    with pytest.raises(ConfigError, match="summarize must be"):
        MMU(summarize="yes")


async def test_a_model_call_that_would_overflow_pages_out_first_as_a_journaled_step() -> None:
    driver = InMemoryDriver()
    model = Scripted(["noted", "noted", "noted"])
    kernel = Castor(llm=model, mmu=MMU(budget=100, driver=driver))

    async def agent() -> list[str]:
        mem = memory()
        mem.add("system", "You are terse. " + words(5))
        mem.add("user", "pin this: the server is web-1", pinned=True)
        for topic in ("alpha", "bravo", "charlie"):
            mem.add("user", f"{topic} " + words(20))
            await mem.complete()
        return [m["content"].split(" ")[0] for m in mem.messages]

    cp = await kernel.run(agent)
    assert cp.status == "COMPLETED", cp.error
    names = [r.tool_name for r in cp.syscall_log]
    assert names == ["model:scripted", PAGE_OUT_TOOL, "model:scripted", PAGE_OUT_TOOL, "model:scripted"]
    first_out = cp.syscall_log[1]
    assert [m["content"].split(" ")[0] for m in first_out.arguments["messages"]] == ["alpha"]  # the oldest
    assert first_out.response["paged_out"] == ["1.0"]
    # The model saw the context after the page-out: system prompt and pinned message kept, alpha gone.
    seen = [m["content"].split(" ")[0] for m in model.calls[1]["messages"]]
    assert seen == ["You", "pin", "noted", "bravo"]
    assert cp.result == ["You", "pin", "noted", "charlie", "noted"]
    assert [p.id for p in await driver.load_pages(cp.pid)] == ["1.0", "3.0", "3.1"]
    assert all("pinned" not in m for m in model.calls[2]["messages"])  # the MMU's fields stay with it


async def test_the_summary_of_what_leaves_is_a_journaled_charged_model_step() -> None:
    model = Scripted(["ok", "the user asked about alpha", "ok"])
    kernel = Castor(llm=model, mmu=MMU(budget=70, summarize=True, summary_max_tokens=10))

    async def agent() -> list[dict[str, Any]]:
        mem = memory()
        mem.add("user", "alpha " + words(20))
        await mem.complete()
        mem.add("user", "bravo " + words(20))
        await mem.complete()
        return mem.messages

    cp = await kernel.run(agent, budgets={"tokens": 10_000})
    assert cp.status == "COMPLETED", cp.error
    out, summary, call = cp.syscall_log[1:4]
    assert out.tool_name == PAGE_OUT_TOOL and out.arguments["summarize"] is True
    assert summary.tool_name == "model:scripted"
    assert "alpha" in summary.arguments["request"]["messages"][1]["content"]
    assert summary.charged["tokens"] > 0  # paid for like any model call
    assert cp.result[0]["content"] == "[Summary of earlier conversation] the user asked about alpha"
    assert call.arguments["request"]["messages"][0] == cp.result[0]
    assert cp.budget_used("tokens") == sum(r.charged.get("tokens", 0) for r in cp.syscall_log)


async def test_a_summary_the_budget_cannot_pay_for_is_left_out() -> None:
    model = Scripted(["ok", "ok"])
    kernel = Castor(llm=model, mmu=MMU(budget=80, summarize=True, summary_max_tokens=10))

    async def agent() -> list[str]:
        mem = memory()
        mem.add("user", "alpha " + words(20))
        mem.add("user", "bravo " + words(20))
        await mem.complete(max_tokens=5)
        return [m["content"] for m in mem.messages]

    cp = await kernel.run(agent, budgets={"tokens": 100})  # the summary's request is the bigger one
    assert cp.syscall_log[1].response["status"] == "INSUFFICIENT_CAPABILITY"  # the summary, refused
    assert cp.status == "COMPLETED", cp.error
    assert [text.split(" ")[0] for text in cp.result] == ["bravo", "ok"]  # alpha left without a summary


async def test_search_memory_finds_paged_out_messages_and_page_in_brings_them_back() -> None:
    model = Scripted(["ok"] * 4)
    kernel = Castor(llm=model, mmu=MMU(budget=50))

    async def agent() -> Any:
        mem = memory()
        mem.add("user", "the battery of web-1 is failing " + words(15))
        await mem.complete()
        mem.add("user", "lunch menu " + words(15))
        await mem.complete()
        hits = await search_memory("battery")
        as_tool = await memory().mmu.on_tool(_ctx(), SEARCH_MEMORY_TOOL, {"query": "battery"})
        back = await mem.page_in([hits[0]["id"]])
        return hits, as_tool, back, [m["content"][:11] for m in mem.messages]

    cp = await kernel.run(agent)
    assert cp.status == "COMPLETED", cp.error
    hits, as_tool, back, contents = cp.result
    assert [h["id"] for h in hits] == ["1.0"] and hits[0]["content"].startswith("the battery")
    assert as_tool.startswith("[1.0] user: the battery")
    assert back == 1 and contents[-1] == "the battery"
    names = [r.tool_name for r in cp.syscall_log]
    assert names[-3:] == [SEARCH_MEMORY_TOOL, SEARCH_MEMORY_TOOL, PAGE_IN_TOOL]
    assert cp.syscall_log[-1].response["pages"][0]["id"] == "1.0"


async def test_page_in_of_an_unknown_page_is_named() -> None:
    kernel = Castor(llm=Scripted([]), mmu=MMU(budget=50))

    async def agent() -> None:
        await memory().page_in(["0.0"])

    with pytest.raises(CastorError, match=r"page '0\.0' is not a page run"):
        await kernel.run(agent)


async def test_memory_needs_a_kernel_with_an_mmu() -> None:
    async def agent() -> None:
        memory()

    with pytest.raises(ConfigError, match=r"Castor\(mmu="):
        await Castor(tools=[]).run(agent)


def _ctx() -> Any:
    from castor.kernel.context import active_run

    return active_run()


async def test_a_model_calls_search_memory_as_a_tool_and_reads_what_left_the_context() -> None:
    def answer_from_memory(request: dict[str, Any]) -> str:
        found = request["messages"][-1]["content"]
        return "the code is " + found.split("code ")[1].split(" ")[0] if "code " in found else "unknown"

    model = Scripted([
        "noted", "noted",
        {"tool_calls": [{"name": "search_memory", "arguments": {"query": "door code"}}]},
        answer_from_memory,
    ])
    kernel = Castor(llm=model, mmu=MMU(budget=60))

    async def agent() -> str:
        mem = memory()
        mem.add("user", "the door code 4711 " + words(15))
        await mem.complete()
        mem.add("user", "unrelated " + words(15))
        await mem.complete()
        mem.add("user", "what is the door code?")
        reply = await mem.complete(tools=[mem.mmu.tool_schema()])
        for call in reply.tool_calls:
            mem.add_tool_result(call.id, await tool(call.name, **call.arguments), name=call.name)
        return (await mem.complete()).text

    cp = await kernel.run(agent)
    assert cp.status == "COMPLETED", cp.error
    assert cp.result == "the code is 4711"
    search = next(r for r in cp.syscall_log if r.tool_name == SEARCH_MEMORY_TOOL)
    assert search.arguments == {"query": "door code", "limit": 5}
    assert search.response[0]["content"].startswith("the door code 4711")


class FailingOnce(InMemoryDriver):
    """A driver whose first store fails (a full disk, a Redis gone): the page-out's messages were nowhere."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    async def store_pages(self, pid: str, pages: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("no space left on device")
        await super().store_pages(pid, pages)


@pytest.mark.parametrize("summarize", [False, True])
async def test_a_page_out_the_driver_fails_to_store_keeps_the_messages_and_is_a_failed_step(summarize: bool) -> None:
    """The messages had left the context before the driver was asked, and the step had no record: the agent
    that caught the error went on with a conversation missing them (stored nowhere), and the run's later
    steps, held behind the unanswered step, were never journaled. Now the messages stay, the step (and its
    summary's, never asked for) is journaled as failed, and a replay raises the same error there."""
    driver = FailingOnce()
    model = Scripted(["noted"] * 8)
    kernel = Castor(llm=model, mmu=MMU(budget=100, driver=driver, summarize=summarize, summary_max_tokens=5))

    async def agent() -> list[str]:
        mem = memory()
        mem.add("system", "You are terse. " + words(5))
        errors = []
        for topic in ("alpha", "bravo", "charlie"):
            mem.add("user", f"{topic} " + words(20))
            try:
                await mem.complete()
            except OSError as error:  # the agent catches it and goes on
                errors.append(str(error))
        return [*errors, *(m["content"].split(" ")[0] for m in mem.messages)]

    cp = await kernel.run(agent)
    assert cp.status == "COMPLETED", cp.error
    names = [r.tool_name for r in cp.syscall_log]
    failed = [r.tool_name for r in cp.syscall_log if r.failure is not None]
    if summarize:
        assert names == ["model:scripted", PAGE_OUT_TOOL, "model:scripted", PAGE_OUT_TOOL, "model:scripted",
                         "model:scripted"], names
        assert failed == [PAGE_OUT_TOOL, "model:scripted"]
    else:
        assert names == ["model:scripted", PAGE_OUT_TOOL, PAGE_OUT_TOOL, "model:scripted"], names
        assert failed == [PAGE_OUT_TOOL]
    assert "no space left on device" in str(cp.syscall_log[1].failure)
    assert len(model.calls) == (3 if summarize else 2)  # the failed page-out's summary was never asked for
    # The failed page-out kept alpha in the context; the next one took it out, with what followed.
    assert cp.result[0] == "no space left on device"
    second = next(r for r in cp.syscall_log[2:] if r.tool_name == PAGE_OUT_TOOL)
    assert second.arguments["messages"][0]["content"].startswith("alpha")
    replayed = await kernel.run(agent, checkpoint=cp.fork(at_step=len(cp.syscall_log)))
    assert replayed.status == "COMPLETED" and replayed.result == cp.result, replayed.error
    assert len(model.calls) == (3 if summarize else 2)  # nothing asked again
