"""Budgets bite for plain tools; declared costs replace the default; kernel operations cost nothing."""

from __future__ import annotations

import math

import pytest

from castor import Castor, CastorWarning, ConfigError, castor_tool
from castor.lib import budget, tool

from .conftest import CALLS, delete_file, search


async def loop_search(n: int = 20) -> list[object]:
    return [await tool("search", query=str(i)) for i in range(n)]


async def agent_20() -> list[object]:
    return await loop_search(20)


async def test_default_cost_limits_plain_tools(store: str | None) -> None:
    kernel = Castor(tools=[search], store=store)
    cp = await kernel.run(agent_20, budgets={"api": 10})
    denied = [r for r in cp.result if isinstance(r, dict)]
    assert CALLS["search"] == 10 and len(denied) == 10
    assert denied[0]["status"] == "INSUFFICIENT_CAPABILITY" and "'api'" in denied[0]["feedback_message"]
    assert cp.budget_used("api") == 10 and cp.budget_remaining("api") == 0


async def test_budget_named_after_a_tool_caps_its_calls() -> None:
    kernel = Castor(tools=[search], budgets={"search": 3})
    cp = await kernel.run(agent_20)
    assert CALLS["search"] == 3 and cp.budget_used("search") == 3


async def test_declared_costs() -> None:
    @castor_tool(consumes="gpu", cost_per_use=4)
    async def render() -> str:
        return "img"

    @castor_tool(cost_per_use=0)
    async def free() -> str:
        return "free"

    async def agent() -> list[object]:
        return [await tool("render"), await tool("render"), await tool("free"), await tool("free")]

    kernel = Castor(tools=[render, free], budgets={"gpu": 5})
    cp = await kernel.run(agent)
    assert cp.result[0] == "img" and cp.result[1]["status"] == "INSUFFICIENT_CAPABILITY"
    assert cp.result[2:] == ["free", "free"]
    assert cp.budget_used("gpu") == 4


async def test_operator_costs_override_the_tool() -> None:
    kernel = Castor(tools=[search], costs={"search": {"api": 5}}, budgets={"api": 10})
    cp = await kernel.run(agent_20)
    assert CALLS["search"] == 2 and cp.budget_used("api") == 10


def test_warns_about_a_budget_no_tool_consumes() -> None:
    with pytest.warns(CastorWarning, match="'disk' limits nothing"):
        Castor(tools=[search], budgets={"api": 1, "disk": 5})


async def test_run_budgets_are_checked_too() -> None:
    kernel = Castor(tools=[search])
    with pytest.warns(CastorWarning, match="typo"):
        await kernel.run(agent_20, budgets={"typo": 1})
    with pytest.raises(ConfigError, match="non-negative number"):
        await kernel.run(agent_20, budgets={"api": "ten"})  # type: ignore[dict-item]


async def test_budget_reading_is_free_and_inf_when_untracked() -> None:
    seen: list[float] = []

    async def agent() -> None:
        seen.append(budget("api"))
        await tool("search", query="x")
        seen.append(budget("api"))
        seen.append(budget("gpu"))

    cp = await Castor(tools=[search]).run(agent, budgets={"api": 5})
    assert seen[:2] == [5, 4] and math.isinf(seen[2]) and cp.budget_used("api") == 1


async def test_destructive_with_budget_still_needs_approval() -> None:
    kernel = Castor(tools=[delete_file], destructive=["delete_file"], budgets={"api": 100})

    async def agent() -> object:
        return await tool("delete_file", path="/x")

    cp = await kernel.run(agent)
    assert cp.status == "SUSPENDED_FOR_HITL" and CALLS["delete_file"] == 0


async def test_no_human_is_asked_what_the_budget_cannot_pay() -> None:
    kernel = Castor(tools=[delete_file], destructive=["delete_file"], budgets={"api": 0})

    async def agent() -> object:
        return await tool("delete_file", path="/x")

    cp = await kernel.run(agent)
    assert cp.status == "COMPLETED" and cp.result["status"] == "INSUFFICIENT_CAPABILITY"
    assert not cp.syscall_log[0].was_hitl


async def test_top_up_a_suspended_run() -> None:
    kernel = Castor(tools=[search])
    cp = await kernel.run(agent_20, budgets={"api": 5})
    assert CALLS["search"] == 5
    forked = cp.fork(at_step=5)
    cp2 = await kernel.run(agent_20, checkpoint=forked, budgets={"api": 20})
    assert CALLS["search"] == 20 and cp2.budget_used("api") == 20


async def test_pid_other_than_the_checkpoints_is_an_error() -> None:
    kernel = Castor(tools=[search])
    cp = await kernel.run(agent_20)
    with pytest.raises(ConfigError, match="fork"):
        await kernel.run(agent_20, checkpoint=cp, pid="other")
