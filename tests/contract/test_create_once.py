"""Create-once contracts: a run header is created once (``RunStore.create``) and a child becomes a fork of
one parent at one step only (``Journal.fork``), so two processes forking one run at one step cannot both
be told they made the fork. Each store is opened twice, as two processes would open it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from castor import AgentCheckpoint, JournalConflictError
from castor.errors import RunExistsError
from castor.seams import Backend
from tests.contract.conftest import FACTORIES
from tests.contract.test_journal import rec


@pytest.fixture(params=sorted(FACTORIES))
async def twins(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Backend, Backend]]:
    """Two backends on one store (memory: one backend twice, as it lives in one process)."""
    first = FACTORIES[request.param](request)
    second = first if request.param == "memory" else FACTORIES[request.param](request)
    try:
        yield first, second
    finally:
        await first.close()
        if second is not first:
            await second.close()


def header(pid: str, agent: str) -> AgentCheckpoint:
    return AgentCheckpoint(pid=pid, status="RUNNING", agent_function_name=agent, capabilities={})


async def test_a_run_is_created_once(twins: tuple[Backend, Backend]) -> None:
    one, two = twins
    await one.runs.create(header("r::fork-2", "first"))
    with pytest.raises(RunExistsError, match="'r::fork-2' exists already") as raised:
        await two.runs.create(header("r::fork-2", "second"))
    assert raised.value.pid == "r::fork-2"
    loaded = await two.runs.load("r::fork-2")
    assert loaded is not None and loaded.agent_function_name == "first"  # the loser wrote nothing
    assert [s.pid for s in await one.runs.list()] == ["r::fork-2"]
    await two.runs.save(header("r::fork-2", "first"))  # a save (the winner driving it) still goes through


async def test_the_same_create_again_is_a_no_op(twins: tuple[Backend, Backend]) -> None:
    """A retried create (its first reply lost with the connection) is not told another made the run."""
    one, two = twins
    mine = header("r::fork-3", "first")
    await one.runs.create(mine)
    await two.runs.create(mine)
    with pytest.raises(RunExistsError):  # another creator's header, whatever it holds, still loses
        await two.runs.create(header("r::fork-3", "first"))
    assert [s.pid for s in await one.runs.list()] == ["r::fork-3"]


async def test_of_many_creators_at_once_exactly_one_wins(twins: tuple[Backend, Backend]) -> None:
    one, two = twins
    outcomes = await asyncio.gather(
        *((one if i % 2 else two).runs.create(header("same", f"c{i}")) for i in range(8)), return_exceptions=True
    )
    assert sum(outcome is None for outcome in outcomes) == 1, outcomes
    assert all(isinstance(o, RunExistsError) for o in outcomes if o is not None), outcomes


async def test_a_child_becomes_a_fork_of_one_parent_at_one_step(twins: tuple[Backend, Backend]) -> None:
    one, two = twins
    for i in range(4):
        await one.journal.append("p", i, rec(i))
        await one.journal.append("q", i, rec(10 + i))
    await one.journal.fork("p", "p::fork-2", 2)
    # The same fork again is a no-op: what a forker that stopped before storing the run left is completed.
    await two.journal.fork("p", "p::fork-2", 2)
    for parent, at in (("p", 3), ("q", 2)):
        with pytest.raises(JournalConflictError):
            await two.journal.fork(parent, "p::fork-2", at)
    assert [r.response["value"] for r in await two.journal.history("p::fork-2")] == [0, 1]
    with pytest.raises(JournalConflictError):  # a run with records of its own never becomes a fork
        await two.journal.fork("p", "q", 2)
    assert [r.response["value"] for r in await one.journal.history("q")] == [10, 11, 12, 13]
