"""A call waiting on a pool that no live worker consumes says so in ``ps`` and ``inspect`` within seconds
("waiting: no worker consumes <queue>"), not only when the coordinator gives up at the call's deadline;
once a worker of the pool comes, the run goes on and the note is gone. ``castor pools`` lists each pool's
live workers and queued tasks."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.fleet.procs import POOLS, Fleet, agent_spec, tool_spec

pytestmark = pytest.mark.fleet


def _until(what: str, check: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s")


def test_a_call_on_a_pool_without_workers_says_so(fleet: Fleet) -> None:
    fleet.worker("fs")  # no worker of web, where the agent's first tool (ticket) runs
    fleet.coordinator("co-1")
    tools = [a for name in POOLS["web"] + POOLS["fs"] for a in ("--tool", tool_spec(name))]
    pid = fleet.cli("submit", agent_spec("job"), *tools, "--budget", "api=10").stdout.strip()
    queue = f"{fleet.queues}.web"
    config = ("--config", str(fleet.config))
    began = time.monotonic()
    line = _until("ps to say the run waits", lambda: next(
        (row for row in fleet.cli("ps", *config).stdout.splitlines() if pid in row and "waiting" in row), None), 15)
    assert time.monotonic() - began < 15  # the call's deadline is 20 s; the note comes within seconds
    assert line == f"[RUN ] {pid}  job  0 steps  (owner: co-1)  (waiting: no worker consumes {queue})"
    assert f"Fleet:  owner: co-1; waiting: no worker consumes {queue}" in fleet.cli("inspect", pid, *config).stdout
    [row] = [r for r in fleet.cli_json("ps", *config) if r["pid"] == pid]
    assert row["waiting"] == f"no worker consumes {queue}"

    listed = {row["pool"]: row for row in fleet.cli_json("pools", *config)}
    assert len(listed["fs"]["workers"]) == 1 and listed["fs"]["workers"][0].startswith("fs-")
    assert (listed["web"]["workers"], listed["web"]["queue"], listed["web"]["queued"]) == ([], queue, 1)
    assert fleet.cli("pools", *config, "--alive", "fs").returncode == 0
    assert fleet.cli("pools", *config, "--alive", "web", check=False).returncode == 1

    fleet.worker("web")  # the pool gets a worker: the queued call runs and the run goes on
    _until("the run to complete", lambda: fleet.cli_json("inspect", pid, *config)["status"] == "COMPLETED", 30)
    assert "waiting" not in fleet.cli("inspect", pid, *config).stdout


def test_a_killed_worker_leaves_its_pool_within_seconds(fleet: Fleet) -> None:
    import signal

    from castor.fleet.workers._heartbeat import PRESENCE_TTL

    fleet.worker("fs")
    fleet.worker("web")
    fleet.coordinator("co-1")
    config = ("--config", str(fleet.config))
    fleet.stop("worker-web", signal.SIGKILL)  # no goodbye: its registry entry goes stale
    killed = time.monotonic()
    tools = [a for name in POOLS["web"] + POOLS["fs"] for a in ("--tool", tool_spec(name))]
    pid = fleet.cli("submit", agent_spec("job"), *tools, "--budget", "api=10").stdout.strip()
    _until("ps to say the run waits", lambda: any(
        pid in row and f"(waiting: no worker consumes {fleet.queues}.web)" in row
        for row in fleet.cli("ps", *config).stdout.splitlines()), PRESENCE_TTL + 10)
    assert time.monotonic() - killed < PRESENCE_TTL + 10
