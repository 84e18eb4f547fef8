"""A whole worker process killed mid-call on the threads pool (the default), Redis broker: its task
comes back only after the broker's visibility timeout, long after the call's deadline. The coordinator
settles it from the step's started marker, once the step's heartbeat expired (within seconds, however
long the call's deadline) or at the deadline: an idempotent call is sent again once and completes once;
any other call is in doubt and goes back to a human — never a plain timeout, never run twice. A live
worker whose tool runs longer than its heartbeat's TTL is never taken for lost."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import castor.lib as lib
from castor import Castor
from castor.checkpoint import AgentCheckpoint
from castor.executors.celery import CeleryExecutor, fleet_options
from castor.settings import load_settings

from .conftest import Fleet, spawn_worker, wait_ready

TIMEOUTS = "timeouts = { noop = 0.5 }"  # the fleet config's line; the lost-worker tools get short deadlines


# The lost-worker tools' deadlines and the heartbeat's TTL: deadlines of a few seconds (a lost call is
# settled at its deadline or by its step's heartbeat, whichever comes first); of a minute plus the default
# grace of 30 s (only the heartbeat can settle it within seconds); of a few seconds under a heartbeat of
# 30 s (only the deadline can).
SHORT = "timeouts = { noop = 0.5, slow_copy = 4, slow_write = 2 }"
LONG = "timeouts = { noop = 0.5, slow_copy = 60, slow_write = 60 }"
DEADLINES = {"short": (SHORT, 1.5), "long": (LONG, 1.5), "late": (SHORT, 30.0)}


@dataclass
class Pool:
    """Threads-pool workers of ``fs`` on queues of their own (the session's workers never take these tasks)."""

    config: Path
    workers: list[int]
    deadlines: str


def _pool(fleet: Fleet, tmp_path: Path, deadlines: str) -> Iterator[tuple[Pool, object]]:
    text = fleet.config.read_text()
    assert TIMEOUTS in text
    own = f"{fleet.settings.broker.queue_prefix}-lost-{uuid.uuid4().hex[:6]}"
    text = text.replace(f'queue_prefix = "{fleet.settings.broker.queue_prefix}"', f'queue_prefix = "{own}"')
    timeouts, heartbeat = DEADLINES[deadlines]
    text = text.replace(TIMEOUTS, timeouts)
    # a killed worker's heartbeat expires this long after its last renewal
    text += f"\n[workers]\nheartbeat = {heartbeat}\n"
    config = tmp_path / "castor.toml"
    config.write_text(text)
    procs = []
    try:
        for n in range(2):
            log = tmp_path / f"worker-{n}.log"
            proc = spawn_worker(config, "fs", "threads", 2, fleet.env, log)
            procs.append(proc)
            wait_ready(proc, "fs", log)
        yield Pool(config, [p.pid for p in procs], deadlines), procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def pool(request: pytest.FixtureRequest, fleet: Fleet, tmp_path: Path) -> Iterator[tuple[Pool, object]]:
    """The tests' workers, for the deadlines their ``pool`` parameter names (``DEADLINES``)."""
    yield from _pool(fleet, tmp_path, request.param)


@pytest.fixture
def long_pool(fleet: Fleet, tmp_path: Path) -> Iterator[tuple[Pool, object]]:
    yield from _pool(fleet, tmp_path, "long")


async def _kernel(pool: Pool) -> AsyncIterator[Castor]:
    settings = load_settings(pool.config, env={})
    options = fleet_options(settings, budgets={})
    if DEADLINES[pool.deadlines][0] == SHORT:  # the tools' few seconds plus 1 s, not the default grace of 30 s
        options["executor"] = CeleryExecutor.factory(settings, journal=options["store"].journal, reply_grace=1.0)
    kernel = Castor(**options)
    try:
        yield kernel
    finally:
        await kernel.close()


@pytest.fixture
async def lost_kernel(pool: tuple[Pool, object]) -> AsyncIterator[Castor]:
    async for kernel in _kernel(pool[0]):
        yield kernel


@pytest.fixture
async def long_kernel(long_pool: tuple[Pool, object]) -> AsyncIterator[Castor]:
    async for kernel in _kernel(long_pool[0]):
        yield kernel


async def _run_killing_its_worker(
    fleet: Fleet, pool: Pool, kernel: Castor, tool: str, tag: str, seconds: float, within: float = 30
) -> tuple[AgentCheckpoint, int]:
    """Run one call of ``tool`` and SIGKILL the whole worker process that runs it; the run's end (within
    ``within`` seconds of the kill), and the pid killed."""

    async def agent() -> object:
        return await lib.tool(tool, tag=tag, seconds=seconds)

    def kill() -> int:
        pid = fleet.running_pid(tag)
        assert pid in pool.workers, "a threads-pool worker runs its tools in its own process"
        os.kill(pid, signal.SIGKILL)
        return pid

    running = asyncio.create_task(kernel.run(agent))
    killed = await asyncio.to_thread(kill)
    return await asyncio.wait_for(running, within), killed


SEEN = {  # what the in-doubt failure says of a call lost under each of DEADLINES
    "short": "started on a worker of pool 'fs'",
    "long": "started on a worker of pool 'fs', which stopped renewing the step's heartbeat (1.5s)",
    "late": "started on a worker of pool 'fs' and gave no result within 3s",
}


@pytest.mark.parametrize("pool", list(DEADLINES), indirect=True)
async def test_a_killed_worker_mid_call_leaves_the_call_in_doubt_for_a_human(
    fleet: Fleet, pool: tuple[Pool, object], lost_kernel: Castor
) -> None:
    """Settled by the step's heartbeat within seconds however long the deadline (``castor.executors._loss``),
    or at the deadline when the heartbeat outlasts it; in doubt either way."""
    tag = f"lost-{uuid.uuid4().hex[:6]}"
    cp, _ = await _run_killing_its_worker(fleet, pool[0], lost_kernel, "slow_write", tag, 60, within=15)
    assert cp.status == "SUSPENDED_FOR_HITL", cp.error
    assert cp.pending_reason == "in doubt: started and never finished"
    assert (fleet.count(tag, "start"), fleet.count(tag, "done")) == (1, 0)
    failures = await lost_kernel.backend.journal.failures(cp.pid)
    assert [f.error_type for f in failures] == ["InDoubtError"]
    assert SEEN[pool[0].deadlines] in failures[0].message


@pytest.mark.parametrize("pool", ["short", "long"], indirect=True)  # a heartbeat past the deadline: README
async def test_a_killed_worker_mid_idempotent_call_is_sent_again_and_completes_once(
    fleet: Fleet, pool: tuple[Pool, object], lost_kernel: Castor
) -> None:
    tag = f"lostcopy-{uuid.uuid4().hex[:6]}"
    # The first run is killed within its 1.5 s; the second, sent once the first is seen lost, completes.
    cp, killed = await _run_killing_its_worker(fleet, pool[0], lost_kernel, "slow_copy", tag, 1.5, within=15)
    assert cp.status == "COMPLETED", cp.error
    assert cp.result == f"copied {tag}"
    assert (fleet.count(tag, "start"), fleet.count(tag, "done")) == (2, 1)  # killed once, completed once
    assert fleet.running_pid(tag) != killed
    assert await lost_kernel.backend.journal.failures(cp.pid) == []


async def test_a_live_worker_running_a_call_longer_than_its_heartbeat_is_not_taken_for_lost(
    fleet: Fleet, long_pool: tuple[Pool, object], long_kernel: Castor
) -> None:
    """Six seconds of a tool is four of its heartbeat's TTL: the worker renews it, and the call completes."""
    tag = f"slowlive-{uuid.uuid4().hex[:6]}"

    async def agent() -> object:
        return await lib.tool("slow_write", tag=tag, seconds=6)

    cp = await asyncio.wait_for(long_kernel.run(agent), 30)
    assert cp.status == "COMPLETED", cp.error
    assert cp.result == f"wrote {tag}"
    assert (fleet.count(tag, "start"), fleet.count(tag, "done")) == (1, 1)
    assert await long_kernel.backend.journal.failures(cp.pid) == []

