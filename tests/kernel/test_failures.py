"""Bad input gets a clear answer; failures end runs FAILED, persisted, and re-raised."""

from __future__ import annotations

import asyncio

import pytest

from castor import Castor, ReplayDivergenceError, RunEndedError, UnknownToolError, castor_tool
from castor.lib import tool

from .conftest import CALLS, search


async def test_invalid_arguments_are_answered_not_executed() -> None:
    async def agent() -> list[object]:
        return [await tool("search", query=3), await tool("search"), await tool("search", query="x", extra=1)]

    cp = await Castor(tools=[search]).run(agent)
    assert CALLS["search"] == 0
    messages = [r["feedback_message"] for r in cp.result]
    assert all(r["status"] == "VALIDATION_ERROR" for r in cp.result)
    assert "query" in messages[0] and "required" in messages[1].lower() and "extra" in messages[2]
    assert len(cp.syscall_log) == 3  # journaled: a resume replays the same answers


async def test_arguments_are_coerced_for_the_tool_but_journaled_raw() -> None:
    got: list[object] = []

    async def add(a: int, b: float = 1.0) -> float:
        got.append((a, b))
        return a + b

    async def agent() -> object:
        return await tool("add", a="2", b=3)

    cp = await Castor(tools=[add]).run(agent)
    assert cp.result == 5 and got == [(2, 3)]
    assert cp.syscall_log[0].request == {"tool_name": "add", "arguments": {"a": "2", "b": 3}}


async def test_unknown_tool_raises_and_fails_the_run(store: str | None) -> None:
    kernel = Castor(tools=[search], store=store)

    async def agent() -> object:
        return await tool("serch", query="x")

    with pytest.raises(UnknownToolError, match=r"'serch'.*search"):
        await kernel.run(agent, pid="typo-run")
    cp = await kernel.aload("typo-run")
    assert cp.status == "FAILED" and "serch" in (cp.error or "")


async def test_tool_failure_is_journaled_not_cached(store: str | None) -> None:
    attempts: list[int] = []

    async def flaky(n: int) -> int:
        attempts.append(n)
        if len(attempts) == 1:
            raise OSError("disk full")
        return n

    async def agent() -> object:
        await tool("search", query="a")
        return await tool("flaky", n=7)

    kernel = Castor(tools=[search, flaky], store=store, budgets={"api": 10})
    with pytest.raises(OSError, match="disk full"):
        await kernel.run(agent, pid="flaky-run")
    cp = await kernel.aload("flaky-run")
    assert cp.status == "FAILED" and cp.error == "OSError: disk full"
    assert [f.message for f in cp.failures] == ["disk full"] and len(cp.syscall_log) == 1
    assert cp.budget_used("api") == 1  # the failed call was refunded
    cp = await kernel.run(agent, checkpoint=cp)
    assert cp.status == "COMPLETED" and cp.result == 7 and CALLS["search"] == 1 and attempts == [7, 7]
    assert cp.budget_used("api") == 2


async def test_a_failure_record_hides_sensitive_arguments(store: str | None) -> None:
    @castor_tool(sensitive=["password"])
    async def login(user: str, password: str) -> str:
        raise PermissionError(f"no such user {user}")

    async def agent() -> object:
        return await tool("login", user="ann", password="hunter2")

    kernel = Castor(tools=[login], store=store)
    with pytest.raises(PermissionError):
        await kernel.run(agent, pid="login-run")
    expected = {"user": "ann", "password": "***"}
    journaled = await kernel.backend.journal.failures("login-run")
    assert [(f.tool_name, f.arguments, f.message) for f in journaled] == [("login", expected, "no such user ann")]
    assert [f.arguments for f in (await kernel.aload("login-run")).failures] == [expected]  # the checkpoint's too


async def test_agent_exception_fails_the_run() -> None:
    async def agent() -> None:
        await tool("search", query="a")
        raise RuntimeError("agent bug")

    kernel = Castor(tools=[search])
    with pytest.raises(RuntimeError, match="agent bug"):
        await kernel.run(agent, pid="bug")
    assert kernel.load("bug").status == "FAILED"


async def test_tool_outside_and_after_a_run() -> None:
    with pytest.raises(RuntimeError, match=r"inside Castor\.run"):
        await tool("search", query="x")
    leaked: list[asyncio.Task[object]] = []

    async def agent() -> str:
        async def later() -> object:
            await asyncio.sleep(0.01)
            return await tool("search", query="late")

        leaked.append(asyncio.ensure_future(later()))
        return "done"

    cp = await Castor(tools=[search]).run(agent)
    assert cp.status == "COMPLETED"
    with pytest.raises(RunEndedError, match="has ended"):
        await leaked[0]
    assert CALLS["search"] == 0


async def test_replay_divergence_names_position_and_calls() -> None:
    queries = iter(["a", "b", "c"])

    async def agent() -> object:
        await tool("search", query="same")
        return await tool("search", query=next(queries))

    kernel = Castor(tools=[search])
    cp = await kernel.run(agent)
    with pytest.raises(ReplayDivergenceError, match="replay divergence at step 1") as info:  # 0.5.1 callers match it
        await kernel.run(agent, checkpoint=cp)
    assert info.value.step == 1
    assert info.value.expected["arguments"] == {"query": "a"} and info.value.actual["arguments"] == {"query": "b"}


async def test_replay_does_not_need_the_tool_any_more() -> None:
    cp = await Castor(tools=[search]).run(_one_search)
    again = await Castor(tools=[]).run(_one_search, checkpoint=cp)
    assert again.status == "COMPLETED" and CALLS["search"] == 1


async def _one_search() -> object:
    return await tool("search", query="x")


async def test_tool_timeout() -> None:
    @castor_tool(timeout_seconds=0.05)
    async def slow() -> str:
        await asyncio.sleep(5)
        return "late"

    async def agent() -> object:
        return await tool("slow")

    kernel = Castor(tools=[slow])
    from castor import ToolTimeoutError

    with pytest.raises(ToolTimeoutError, match="slow"):
        await kernel.run(agent, pid="slow-run")
    assert kernel.load("slow-run").failures[0].error_type == "ToolTimeoutError"


def test_bad_tool_registrations() -> None:
    from castor import ConfigError

    with pytest.raises(ConfigError, match="twice"):
        Castor(tools=[search, search])
    with pytest.raises(ConfigError, match="unknown tools: nope"):
        Castor(tools=[search], destructive=["nope"])
    with pytest.raises(ConfigError, match="name"):
        Castor(tools=[lambda: 1])
    with pytest.raises(TypeError, match="bogus"):
        Castor(tools=[], bogus=1)


async def test_replay_accepts_arguments_equal_as_json_and_still_refuses_others() -> None:
    # The replay stage compares equal arguments inline and leaves the rest to canonical JSON: a tuple the
    # journal keeps as a list after a JSON round trip still replays; another value still diverges.
    seen: list[object] = []

    async def total(items: list[int]) -> int:
        seen.append(items)
        return sum(items)

    values = iter([(1, 2), (1, 2), (1, 3)])

    async def agent() -> object:
        return await tool("total", items=next(values))

    kernel = Castor(tools=[total])
    cp = await kernel.run(agent)
    restored = type(cp).model_validate_json(cp.model_dump_json())
    assert restored.syscall_log[0].request["arguments"] == {"items": [1, 2]}
    again = await kernel.run(agent, checkpoint=restored)
    assert again.status == "COMPLETED" and again.result == 3 and len(seen) == 1
    with pytest.raises(ReplayDivergenceError, match="replay divergence at step 0"):
        await kernel.run(agent, checkpoint=type(cp).model_validate_json(cp.model_dump_json()))
