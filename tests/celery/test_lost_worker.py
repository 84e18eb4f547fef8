"""A whole worker process killed mid-call on the threads pool (the default), Redis broker: its task
comes back only after the broker's visibility timeout, long after the call's deadline. The coordinator
settles it at the deadline from the step's started marker: an idempotent call is sent again once and
completes once; any other call is in doubt and goes back to a human — never a plain timeout, never run
twice."""

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


@dataclass
class Pool:
    """Threads-pool workers of ``fs`` on queues of their own (the session's workers never take these tasks)."""

    config: Path
    workers: list[int]


@pytest.fixture
def pool(fleet: Fleet, tmp_path: Path) -> Iterator[tuple[Pool, object]]:
    text = fleet.config.read_text()
    assert TIMEOUTS in text
    own = f"{fleet.settings.broker.queue_prefix}-lost-{uuid.uuid4().hex[:6]}"
    text = text.replace(f'queue_prefix = "{fleet.settings.broker.queue_prefix}"', f'queue_prefix = "{own}"')
    text = text.replace(TIMEOUTS, "timeouts = { noop = 0.5, slow_copy = 4, slow_write = 2 }")
    # a killed worker's heartbeat must expire before the deadline the idempotent call is sent again under
    text += "\n[workers]\nheartbeat = 1.5\n"
    config = tmp_path / "castor.toml"
    config.write_text(text)
    procs = []
    try:
        for n in range(2):
            log = tmp_path / f"worker-{n}.log"
            proc = spawn_worker(config, "fs", "threads", 2, fleet.env, log)
            procs.append(proc)
            wait_ready(proc, "fs", log)
        yield Pool(config, [p.pid for p in procs]), procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
async def lost_kernel(pool: tuple[Pool, object]) -> AsyncIterator[Castor]:
    settings = load_settings(pool[0].config, env={})
    options = fleet_options(settings, budgets={})
    # deadlines of the tools' few seconds plus 1 s, not the default grace of 30 s
    options["executor"] = CeleryExecutor.factory(settings, journal=options["store"].journal, reply_grace=1.0)
    kernel = Castor(**options)
    try:
        yield kernel
    finally:
        await kernel.close()


async def _run_killing_its_worker(
    fleet: Fleet, pool: Pool, kernel: Castor, tool: str, tag: str, seconds: float
) -> tuple[AgentCheckpoint, int]:
    """Run one call of ``tool`` and SIGKILL the whole worker process that runs it; the run's end, and
    the pid killed."""

    async def agent() -> object:
        return await lib.tool(tool, tag=tag, seconds=seconds)

    def kill() -> int:
        pid = fleet.running_pid(tag)
        assert pid in pool.workers, "a threads-pool worker runs its tools in its own process"
        os.kill(pid, signal.SIGKILL)
        return pid

    running = asyncio.create_task(kernel.run(agent))
    killed = await asyncio.to_thread(kill)
    return await asyncio.wait_for(running, 30), killed


async def test_a_killed_worker_mid_call_leaves_the_call_in_doubt_for_a_human(
    fleet: Fleet, pool: tuple[Pool, object], lost_kernel: Castor
) -> None:
    tag = f"lost-{uuid.uuid4().hex[:6]}"
    cp, _ = await _run_killing_its_worker(fleet, pool[0], lost_kernel, "slow_write", tag, 30)
    assert cp.status == "SUSPENDED_FOR_HITL", cp.error
    assert cp.pending_reason == "in doubt after worker loss"
    assert (fleet.count(tag, "start"), fleet.count(tag, "done")) == (1, 0)
    failures = await lost_kernel.backend.journal.failures(cp.pid)
    assert [f.error_type for f in failures] == ["InDoubtError"]
    assert "started on a worker of pool 'fs'" in failures[0].message


async def test_a_killed_worker_mid_idempotent_call_is_sent_again_and_completes_once(
    fleet: Fleet, pool: tuple[Pool, object], lost_kernel: Castor
) -> None:
    tag = f"lostcopy-{uuid.uuid4().hex[:6]}"
    # The first run is killed within its 1.5 s; the second, sent at the deadline (4 + 1 s), completes.
    cp, killed = await _run_killing_its_worker(fleet, pool[0], lost_kernel, "slow_copy", tag, 1.5)
    assert cp.status == "COMPLETED", cp.error
    assert cp.result == f"copied {tag}"
    assert (fleet.count(tag, "start"), fleet.count(tag, "done")) == (2, 1)  # killed once, completed once
    assert fleet.running_pid(tag) != killed
    assert await lost_kernel.backend.journal.failures(cp.pid) == []
