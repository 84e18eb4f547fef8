"""A model call on the ``llm`` pool that the provider answers while Redis is away (killed, restarted from its
AOF): the worker rides the outage out as it does for a tool's result. The rate limiter's settle and the
step's charge wait for Redis (neither is the call failing), then the step is journaled: the model is called
once, charged what it used, and nothing is in doubt."""

from __future__ import annotations

import time

import pytest

from tests.fleet.procs import Fleet, PrivateRedis
from tests.fleet.test_fencing import status
from tests.fleet.test_llm_fleet import AGENTS, _configure, _llm_worker, _stats
from tests.fleet.test_scenario import wait_for
from tests.llm.fake_openai import FakeOpenAI

pytestmark = pytest.mark.fleet


def _status(fleet: Fleet, pid: str) -> str:
    try:
        return status(fleet, pid)
    except Exception:  # the CLI met Redis still coming back
        return "?"


def test_a_model_call_answered_while_redis_is_away_is_journaled_once_not_made_again(
    aof_fleet: tuple[Fleet, PrivateRedis],
) -> None:
    fleet, server = aof_fleet
    fake = FakeOpenAI(latency=3.0).start()
    try:
        _configure(fleet, fake)
        _llm_worker(fleet)
        fleet.worker("web")
        fleet.coordinator("co-a", lease=5.0)
        pid = fleet.cli("submit", f"{AGENTS}:one_call", "--budget", "tokens=100").stdout.strip()
        wait_for("the model call to reach the server", lambda: _stats(fake)["requests"] == 1, 30)
        time.sleep(0.5)
        server.kill()
        time.sleep(4.0)  # the provider answers meanwhile
        server.start()
        wait_for(f"run {pid} to end", lambda: _status(fleet, pid) in ("COMPLETED", "FAILED", "SUSPENDED_FOR_HITL"), 90)
        run = fleet.cli_json("inspect", pid)
        assert run["status"] == "COMPLETED", (run.get("error"), fleet.log("worker-llm")[-3000:])
        assert _stats(fake)["requests"] == 1  # not made again: the answer was kept
        assert run["failures"] == []  # nothing in doubt
        charged = run["syscall_log"][0]["charged"]
        assert charged == {"input_tokens": 4, "output_tokens": 4, "tokens": 8}  # what it used, settled after
        assert run["capabilities"]["tokens"]["current_usage"] == 8
    finally:
        fake.stop()
