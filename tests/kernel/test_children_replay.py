"""spawn and join are steps like any tool call: replayed from the journal, checked against it, journaled."""

from __future__ import annotations

import pytest

from castor import AgentRegistry, Castor, ReplayDivergenceError, castor_agent
from castor.lib import join, spawn, tool
from tests.kernel.conftest import CALLS, search


def registry_with_researchers() -> AgentRegistry:
    registry = AgentRegistry()

    @castor_agent("researcher", registry=registry)
    async def researcher() -> str:
        await tool("search", query="a")
        return "found"

    @castor_agent("writer", registry=registry)
    async def writer() -> str:
        return "written"

    return registry


async def test_a_resumed_parent_replays_spawn_and_join_without_running_the_child_again() -> None:
    async def parent() -> object:
        found = await join(await spawn("researcher", capabilities={"api": 3}))
        return found, await tool("search", query="after")

    kernel = Castor(tools=[search], agent_registry=registry_with_researchers())
    cp = await kernel.run(parent, budgets={"api": 10}, pid="boss")
    assert cp.status == "COMPLETED" and CALLS["search"] == 2
    spawned, joined = cp.syscall_log[0], cp.syscall_log[1]
    assert spawned.request == {"tool_name": "spawn", "arguments": {"agent": "researcher", "capabilities": {"api": 3.0}}}
    assert spawned.response == "boss::researcher-0" and spawned.charged == {"api": 3.0}
    assert joined.response == "found" and joined.child_checkpoint is not None
    assert spawned.finished_at is not None and joined.finished_at is not None  # as a tool's record

    resumed = await kernel.run(parent, checkpoint=cp.fork(at_step=3))
    assert resumed.result == cp.result and CALLS["search"] == 2  # nothing ran again


async def test_a_resumed_parent_that_spawns_another_agent_diverges() -> None:
    wanted = ["researcher"]

    async def parent() -> object:
        return await join(await spawn(wanted[0]))

    kernel = Castor(tools=[search], agent_registry=registry_with_researchers())
    cp = await kernel.run(parent)
    wanted[0] = "writer"
    with pytest.raises(ReplayDivergenceError, match="replay divergence at step 0"):
        await kernel.run(parent, checkpoint=cp.fork(at_step=2))
