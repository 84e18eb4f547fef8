"""A step that finished behind an earlier step with no record yet (calls at once) is never made again.

The journal has no holes, so such a record waits for the steps before it. Before, a run that stopped with
records waiting (one call waits for a human, or is still running when the agent's ``asyncio.gather`` gave
up) dropped them and refunded their charge, and the resume made those calls again: a tool that is not
idempotent ran twice across approve and resume. Now the run keeps them (``AgentCheckpoint.held``, saved
with the run): a resume serves them as replayed steps, and journals them once the steps before them are.

A store whose approval request waits on the network (Redis does) lets the later call finish before the
destructive one has suspended the run: ``SlowRequests`` makes the memory and SQLite stores do the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from castor import Castor, ReplayDivergenceError
from castor.backends.memory import memory_backend
from castor.backends.sqlite import sqlite_backend
from castor.cli._render import inspect_lines
from castor.lib import parallel, tool
from castor.seams import Backend, PendingApproval

RAN: list[str] = []


async def send(to: str) -> str:
    """Not idempotent: each run of it is a message sent."""
    RAN.append(f"send {to}")
    return f"sent to {to}"


async def delete_file(path: str) -> str:
    RAN.append(f"delete {path}")
    return f"deleted {path}"


async def slow_send(to: str) -> str:
    RAN.append(f"slow_send {to}")
    await asyncio.sleep(0.1)
    return f"sent to {to}, slowly"


@pytest.fixture(autouse=True)
def _fresh() -> None:
    RAN.clear()


class SlowRequests:
    """An approvals store whose request takes a network round trip."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def request(self, pending: PendingApproval) -> None:
        await asyncio.sleep(0.02)
        await self.inner.request(pending)


def slowed(backend: Backend) -> Backend:
    backend.approvals = SlowRequests(backend.approvals)
    return backend


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Backend]:
    """A new backend on one store at each call, as each process has (memory: one backend, shared)."""
    if request.param == "memory":
        shared = slowed(memory_backend())
        return lambda: shared
    if request.param == "sqlite":
        return lambda: slowed(sqlite_backend(str(tmp_path / "castor.db")))
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    from castor.backends.redis import redis_backend

    return lambda: redis_backend(url, prefix=prefix)  # its request waits on Redis itself


def kernel(backend: Backend) -> Castor:
    return Castor(tools=[send, delete_file, slow_send], destructive=["delete_file"], store=backend)


async def agent() -> str:
    results = await parallel(("delete_file", {"path": "/data"}), ("send", {"to": "ops"}))
    return " / ".join(results) + " / " + str(await tool("send", to="done"))


async def test_a_call_that_finished_beside_one_that_waits_for_a_human_is_not_made_again(
    store: Callable[[], Backend],
) -> None:
    first = kernel(store())
    cp = await first.run(agent, budgets={"api": 10}, pid="beside")
    assert (cp.status, cp.pending_step) == ("SUSPENDED_FOR_HITL", 0)
    assert RAN == ["send ops"] and cp.syscall_log == [] and list(cp.held) == [1]
    assert cp.capabilities["api"].current_usage == 1  # the kept call was charged, and stays charged
    await first.close()

    second = kernel(store())  # another process: the kept record comes back with the run
    loaded = await second.aload("beside")
    assert list(loaded.held) == [1] and loaded.capabilities["api"].current_usage == 1  # its charge with it
    shown = "\n".join(inspect_lines(loaded))
    assert "Kept, journaled after the steps before them: 1" in shown and "send" in shown.split("Kept")[1]
    await second.approve("beside")
    done = await second.run(agent, checkpoint=await second.aload("beside"))
    assert done.status == "COMPLETED", done.error
    assert done.result == "deleted /data / sent to ops / sent to done"
    assert RAN == ["send ops", "delete /data", "send done"]  # "send ops" once over the run's whole life
    assert [r.tool_name for r in done.syscall_log] == ["delete_file", "send", "send"] and done.held == {}
    assert [r.response for r in await second.backend.journal.history("beside")] == [
        "deleted /data", "sent to ops", "sent to done"]
    assert done.capabilities["api"].current_usage == 3  # each call charged once
    await second.close()


async def test_a_resume_that_asks_another_call_at_a_kept_step_diverges() -> None:
    castor = kernel(slowed(memory_backend()))
    cp = await castor.run(agent)
    assert list(cp.held) == [1]
    await castor.approve(cp)

    async def other() -> str:
        return str(await parallel(("delete_file", {"path": "/data"}), ("send", {"to": "someone else"})))

    with pytest.raises(ReplayDivergenceError, match="step 1"):
        await castor.run(other, checkpoint=cp)
    assert RAN == ["send ops", "delete /data"]


async def test_a_fork_makes_the_kept_steps_again() -> None:
    castor = kernel(slowed(memory_backend()))
    cp = await castor.run(agent)
    assert list(cp.held) == [1]
    fork = cp.fork(at_step=0)
    assert fork.held == {}


async def test_records_behind_a_call_the_agent_left_running_are_journaled_when_it_finishes() -> None:
    """``asyncio.gather`` gives up at the suspension and leaves the slow call running: the run stops with
    the fast call's record kept behind it; the slow call's record, when it comes, journals both."""

    async def gathers() -> str:
        async def later() -> str:
            await asyncio.sleep(0.05)  # the destructive call goes out last, once the fast one finished
            return str(await tool("delete_file", path="/data"))

        results = await asyncio.gather(tool("slow_send", to="a"), tool("send", to="b"), later())
        return " / ".join(results)

    castor = kernel(memory_backend())
    cp = await castor.run(gathers)
    assert (cp.status, cp.pending_step) == ("SUSPENDED_FOR_HITL", 2)
    assert list(cp.held) == [1]  # "send b" finished; "slow_send a" (step 0) still runs
    await asyncio.sleep(0.2)  # the slow call finishes after the run stopped
    assert [r.tool_name for r in await castor.backend.journal.history(cp.pid)] == ["slow_send", "send"]
    await castor.approve(cp)
    done = await castor.run(gathers, checkpoint=await castor.aload(cp.pid))
    assert done.status == "COMPLETED", done.error
    assert sorted(RAN) == ["delete /data", "send b", "slow_send a"]  # each once


async def test_a_new_process_serves_a_kept_step_while_the_call_before_it_is_made_again(tmp_path: Path) -> None:
    """The process that left the slow call running is gone before it finished (here: it never finishes).
    Another process resumes: the slow call, never journaled, is made again (a plain tool run in-process:
    README, "Not promised"), and the call that finished behind it is served from the kept record."""
    stuck = asyncio.Event()

    async def hangs(to: str) -> str:
        RAN.append(f"hangs {to}")
        if len(RAN) == 1:  # the first process's call: never finishes
            await stuck.wait()
        await asyncio.sleep(0.02)  # the second's: still running when the call behind it is asked
        return f"sent to {to}"

    async def gathers() -> str:
        async def later() -> str:
            await asyncio.sleep(0.05)
            return str(await tool("delete_file", path="/data"))

        results = await asyncio.gather(tool("hangs", to="a"), tool("send", to="b"), later())
        return " / ".join(results)

    db = str(tmp_path / "castor.db")
    gone = Castor(tools=[hangs, send, delete_file], destructive=["delete_file"], store=sqlite_backend(db))
    cp = await gone.run(gathers, pid="left")
    assert (cp.status, cp.pending_step, list(cp.held)) == ("SUSPENDED_FOR_HITL", 2, [1])

    again = Castor(tools=[hangs, send, delete_file], destructive=["delete_file"], store=sqlite_backend(db))
    await again.approve("left")  # recorded: step 2 runs when the resume reaches it
    done = await again.run(gathers, checkpoint=await again.aload("left"))
    assert done.status == "COMPLETED", done.error
    assert done.result == "sent to a / sent to b / deleted /data"
    assert RAN == ["hangs a", "send b", "hangs a", "delete /data"]  # "send b" once
    assert [r.tool_name for r in done.syscall_log] == ["hangs", "send", "delete_file"]
    await again.close()


class FailsOnce:
    """A journal whose write of ``step`` fails once, as a store that drops its connection mid-write."""

    def __init__(self, inner: Any, step: int) -> None:
        self.inner, self.step, self.failed = inner, step, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append(self, run_id: str, step: int, record: Any) -> None:
        if step == self.step and not self.failed:
            self.failed = True
            raise ConnectionError("the store went away mid-write")
        await self.inner.append(run_id, step, record)


async def test_a_kept_record_whose_write_fails_stays_kept_and_is_not_made_again() -> None:
    """The approval journals the decided step, then the kept one behind it, whose write fails: the record
    stays kept with the run, and the resume journals it then, without making the call again."""
    backend = slowed(memory_backend())
    castor = kernel(backend)
    cp = await castor.run(agent, pid="flaky-store")
    assert list(cp.held) == [1]
    journal = backend.journal = FailsOnce(backend.journal, 1)
    await castor.approve("flaky-store")
    assert journal.failed
    loaded = await castor.aload("flaky-store")
    assert [r.tool_name for r in loaded.syscall_log] == ["delete_file"] and list(loaded.held) == [1]
    done = await castor.run(agent, checkpoint=loaded)
    assert done.status == "COMPLETED", done.error
    assert RAN == ["send ops", "delete /data", "send done"]  # "send ops" once
    assert [r.tool_name for r in done.syscall_log] == ["delete_file", "send", "send"]


async def test_a_run_that_completes_before_reaching_a_kept_step_keeps_it_charged(tmp_path: Path) -> None:
    """The first process left step 0 running (it never finishes) with step 1's call made and kept behind
    it. The resume's agent (another path this time) completes without a call: step 1's call was made all
    the same, so its record stays with the run, charged, and ``castor inspect`` lists it. Before, the
    completed run dropped it and refunded its charge: an effect that happened, missing from its accounts."""
    stuck = asyncio.Event()
    first_drive = [True]

    async def hangs(to: str) -> str:
        RAN.append(f"hangs {to}")
        if first_drive[0]:
            await stuck.wait()
        return f"sent to {to}"

    async def fickle() -> str:
        if not first_drive[0]:
            return "nothing to do"

        async def later() -> str:
            await asyncio.sleep(0.05)
            return str(await tool("delete_file", path="/data"))

        return str(await asyncio.gather(tool("hangs", to="a"), tool("send", to="b"), later()))

    def castor() -> Castor:
        return Castor(tools=[hangs, send, delete_file], destructive=["delete_file"],
                      store=sqlite_backend(str(tmp_path / "castor.db")))

    cp = await castor().run(fickle, budgets={"api": 10}, pid="fickle")
    assert (cp.status, list(cp.held)) == ("SUSPENDED_FOR_HITL", [1])
    first_drive[0] = False
    again = castor()
    done = await again.run(fickle, checkpoint=await again.aload("fickle"))
    assert done.status == "COMPLETED", done.error
    assert RAN == ["hangs a", "send b"] and done.syscall_log == []
    assert list(done.held) == [1] and done.held[1].tool_name == "send"
    assert done.capabilities["api"].current_usage == 1  # the kept step's call, made once
    reloaded = await castor().aload("fickle")
    assert list(reloaded.held) == [1] and reloaded.capabilities["api"].current_usage == 1
    assert "Kept, made but never journaled" in "\n".join(inspect_lines(reloaded))
    await again.close()
