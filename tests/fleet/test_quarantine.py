"""A poison run (its agent kills the process that drives it) is quarantined after a bounded number of
coordinator deaths, with real coordinator processes restarted by the test as a supervisor would; a run
submitted beside it completes."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from castor.fleet.scheduler.coordinator import CoordinatorConfig

from castor.errors import CastorError, ConfigError
from castor.settings import load_settings
from tests.fleet.procs import Fleet, agent_spec, tool_spec
from tests.fleet.test_fencing import status

TOOLS = [a for n in ("ticket", "fetch", "store") for a in ("--tool", tool_spec(n))]
MAX_TAKEOVERS = 2


def test_a_run_that_kills_its_coordinator_is_quarantined_and_the_others_go_on(fleet: Fleet) -> None:
    started: list[subprocess.Popen[bytes]] = []

    def supervise(name: str) -> None:
        # one run at a time each: the normal run never shares a coordinator with the poison
        started.append(fleet.coordinator(name, "--max-takeovers", str(MAX_TAKEOVERS), lease=1.0,
                                         executor="local", concurrency=1))

    for name in ("co-a", "co-b"):
        supervise(name)
    poison = fleet.cli("submit", agent_spec("poison"), *TOOLS).stdout.strip()
    normal = fleet.cli("submit", agent_spec("job"), *TOOLS).stdout.strip()
    deadline = time.monotonic() + 90
    while status(fleet, poison) != "FAILED":
        assert time.monotonic() < deadline, f"{poison} is {status(fleet, poison)}: {fleet.log('co-a')[-2000:]}"
        assert sum(p.poll() is not None for p in started) <= MAX_TAKEOVERS + 1, "more deaths than allowed"
        for name in ("co-a", "co-b"):
            if fleet.procs[name].poll() is not None:
                supervise(name)
        time.sleep(0.05)
    deadline = time.monotonic() + 30
    while status(fleet, normal) != "COMPLETED" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status(fleet, normal) == "COMPLETED", fleet.log("co-b")[-2000:]

    deaths = [p.returncode for p in started if p.poll() is not None]
    assert deaths == [-signal.SIGKILL] * (MAX_TAKEOVERS + 1)  # the first driver and each taker died once
    inspected = fleet.cli_json("inspect", poison)
    assert inspected["status"] == "FAILED"
    assert inspected["error"] == f"quarantined: taken over {MAX_TAKEOVERS} times; its driver died each time"
    assert [r["request"]["tool_name"] for r in inspected["syscall_log"]] == ["ticket"]  # its journal is kept
    assert fleet.count("tickets") == 2  # the poison's first call ran once, replayed by each taker
    assert [r["pid"] for r in fleet.cli_json("ps", "--status", "FAILED")] == [poison]
    assert "quarantined: taken over" in fleet.cli("inspect", poison).stdout
    time.sleep(1.5)  # nobody drives it again: no more deaths
    assert all(p.poll() is None for p in (fleet.procs["co-a"], fleet.procs["co-b"]))


def test_max_takeovers_is_read_from_the_config_and_checked(tmp_path: Path) -> None:
    config = tmp_path / "castor.toml"
    config.write_text("[coordinator]\nmax_takeovers = 5\n")
    assert load_settings(config, env={}).coordinator.max_takeovers == 5
    assert load_settings(None, env={}).coordinator.max_takeovers == 3
    config.write_text("[coordinator]\nmax_takeovers = -1\n")
    with pytest.raises(ConfigError, match=r"\[coordinator\] max_takeovers = -1 is out of range"):
        load_settings(config, env={})
    with pytest.raises(CastorError, match="max_takeovers"):
        CoordinatorConfig("redis://127.0.0.1:6379/0", max_takeovers=-1)
