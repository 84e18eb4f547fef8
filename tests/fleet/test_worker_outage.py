"""Redis (broker and store, AOF on) restarted while a worker runs a tool: the worker keeps the finished
tool's result until Redis is back and journals it; it rides out the restart and serves on. The step is
journaled once, the tool ran once, nobody is asked, and the run completes."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from castor.backends.redis import keys
from tests.fleet.procs import Fleet, agent_spec, tool_spec
from tests.fleet.test_scenario import wait_for
from tests.redis_support import free_port, need_redis_server, start_redis_server

pytestmark = pytest.mark.fleet  # starts processes (CLI, workers or redis-server)

AOF = ("--appendonly", "yes", "--appendfsync", "always")
TOOLS = [a for n in ("ticket", "fetch", "store") for a in ("--tool", tool_spec(n))]
DOWN = 4.0  # seconds Redis stays away, longer than the tool has left to run


class Private:
    """A fleet on a redis-server of its own, which a test can restart."""

    def __init__(self, tmp: Path, shared_url: str) -> None:
        self.port = free_port()
        self.data = tmp / "redis"
        self.data.mkdir()
        self.server = start_redis_server(self.data, self.port, *AOF)
        self.fleet = Fleet(f"redis://127.0.0.1:{self.port}/0", tmp)
        self.fleet.env["CASTOR_TEST_REDIS"] = shared_url  # the tools count where the outage cannot reach

    def restart(self, down: float, kill: bool) -> None:
        """Stop Redis, cleanly or with SIGKILL (no final write: the AOF synced at every write is all there
        is), keep it away ``down`` seconds, start it again."""
        if kill:
            self.server.kill()
        else:
            subprocess.run(["redis-cli", "-p", str(self.port), "shutdown"], check=False, capture_output=True)
        self.server.wait(10)
        time.sleep(down)
        self.server = start_redis_server(self.data, self.port, *AOF)

    def close(self) -> None:
        try:
            self.fleet.close()
        finally:
            self.server.send_signal(signal.SIGTERM)
            self.server.wait(10)


@pytest.fixture
def private(tmp_path: Path, redis_url: str) -> Iterator[Private]:
    need_redis_server("restarts a server of its own")
    outage = Private(tmp_path, redis_url)
    try:
        yield outage
    finally:
        outage.close()


def _status(fleet: Fleet, pid: str) -> str:
    return str(fleet.redis.hget(keys.run_header(fleet.prefix, pid), "status") or "")


@pytest.mark.parametrize("kill", [False, True], ids=["shutdown", "sigkill"])
def test_a_worker_keeps_a_finished_result_across_a_redis_restart(private: Private, redis_url: str, kill: bool) -> None:
    fleet = private.fleet
    counts = redis.Redis.from_url(redis_url, decode_responses=True)
    fleet.worker("web")
    fleet.worker("fs")
    fleet.coordinator("co-a", lease=20.0)  # a lease that outlasts the outage: the coordinator is not on trial
    pid = fleet.cli("submit", agent_spec("restart_job"), *TOOLS).stdout.strip()
    wait_for("the slow call to start", lambda: fleet.redis.exists(keys.started_marker(fleet.prefix, pid, 1)), 30)
    ticket = fleet.cli_json("inspect", pid)["syscall_log"][0]["response"]
    time.sleep(0.5)
    private.restart(DOWN, kill)  # the 3 s tool ends while Redis is away
    try:
        wait_for("the run to end", lambda: _status(fleet, pid) in ("COMPLETED", "FAILED", "SUSPENDED_FOR_HITL"), 60)
        logs = fleet.log("worker-web")[-4000:] + fleet.log("co-a")[-3000:]
        assert _status(fleet, pid) == "COMPLETED", logs
        assert counts.get(f"{fleet.prefix}:count:{ticket}:slow") == "1"  # the tool ran once
        log = fleet.cli_json("inspect", pid)["syscall_log"]
        assert [r["request"]["tool_name"] for r in log] == ["ticket", "fetch", "store"]
        assert log[1]["response"] == f"fetched {ticket}:slow"
        for pool in ("web", "fs"):  # both rode the restart out
            assert fleet.procs[f"worker-{pool}"].poll() is None, fleet.log(f"worker-{pool}")[-4000:]
        # and still serve: a new run completes
        again = fleet.cli("submit", agent_spec("restart_job"), *TOOLS).stdout.strip()
        wait_for("a run after the restart", lambda: _status(fleet, again) == "COMPLETED", 30)
    finally:
        counts.delete(*counts.keys(f"{fleet.prefix}:count:*") or ["-"])
        counts.close()
