"""Agents of the fleet's child-agent tests: a parent that delegates a slow call to a child agent."""

from __future__ import annotations

from castor import castor_agent
from castor.lib import join, spawn, tool


@castor_agent("fleet_helper")
async def fleet_helper() -> str:
    """The child: a quick call, then a slow one (its coordinator is killed during it)."""
    t = await tool("ticket")
    await tool("fetch", tag=f"{t}:child-slow", seconds=3.0)
    return str(t)


async def parent_job() -> dict[str, str]:
    """A call, a child agent with part of the budget, then a call after the join."""
    t = await tool("ticket")
    child = await join(await spawn("fleet_helper", capabilities={"api": 5}))
    await tool("store", tag=f"{t}:after")
    return {"ticket": t, "child": child}
