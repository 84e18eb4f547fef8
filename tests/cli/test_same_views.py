"""``ps`` and ``inspect`` print one format whatever the store (SQLite or Redis: same layout, same case;
a fleet run adds where it is), and a run still going shows its live step count and budget use, not the
``0 steps`` / ``20 / 20 remaining`` its header was saved with."""

from __future__ import annotations

import asyncio
import time

import pytest

from castor.backends import open_backend
from castor.checkpoint import AgentCheckpoint, Capability, SyscallRecord

from .conftest import RUN, Cli


def _stores(workdir: object, redis_url: str, redis_prefix: str) -> dict[str, tuple[str, ...]]:
    return {"sqlite": ("--db", "runs.db"), "redis": ("--store", f"{redis_url}?prefix={redis_prefix}")}


def test_ps_and_inspect_print_the_same_whatever_the_store(cli: Cli, workdir: object, redis_url: str,
                                                          redis_prefix: str) -> None:
    shown: dict[str, tuple[str, list[str]]] = {}
    for name, store in _stores(workdir, redis_url, redis_prefix).items():
        pid = cli(*RUN, "--budget", "api=20", "--pid", "same-run", *store).pid  # suspends at delete_file
        listed = cli("ps", *store)
        inspected = cli("inspect", pid, *store)
        assert listed.code == inspected.code == 0, listed.err + inspected.err
        # the fleet's view says where the run is; the rest is the same, line for line
        lines = [line for line in inspected.out.splitlines() if not line.startswith("Fleet:  ")]
        shown[name] = (listed.out, lines)
    assert shown["sqlite"] == shown["redis"]
    ps_out, inspect_lines = shown["redis"]
    assert ps_out == "[HITL] same-run  cleanup  1 step  (pending: delete_file)\n"
    assert inspect_lines[:3] == ["PID:    same-run", "Status: SUSPENDED_FOR_HITL", "Agent:  cleanup"]
    assert "  api: 19 / 20 remaining" in inspect_lines
    fleet_line = cli("inspect", "same-run", *_stores(workdir, redis_url, redis_prefix)["redis"]).out
    assert "Fleet:  not held by a coordinator" in fleet_line.splitlines()


def _running(url: str, pid: str, steps: int) -> None:
    """A run another process drives: its header saved RUNNING at the start, ``steps`` journaled and charged
    since."""

    async def write() -> None:
        backend = open_backend(url)
        try:
            cp = AgentCheckpoint(pid=pid, status="RUNNING", agent_function_name="crawl",
                                 capabilities={"api": Capability(resource_type="api", max_budget=20)})
            await backend.runs.save(cp)
            await backend.budgets.open_run(pid, {"api": 20}, {})
            for step in range(steps):
                record = SyscallRecord(request={"tool_name": "search", "arguments": {"q": step}}, response="ok",
                                       timestamp=time.time(), charged={"api": 1.0})
                await backend.budgets.charge(pid, step, {"api": 1.0})
                await backend.journal.append(pid, step, record)
        finally:
            await backend.close()

    asyncio.run(write())


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_running_run_shows_its_live_steps_and_budget(cli: Cli, workdir: object, redis_url: str,
                                                       redis_prefix: str, store: str) -> None:
    flags = _stores(workdir, redis_url, redis_prefix)[store]
    url = f"sqlite:///{workdir}/runs.db" if store == "sqlite" else flags[1]
    _running(url, "busy-run", 3)
    assert cli("ps", *flags).out.startswith("[RUN ] busy-run  crawl  3 steps")
    shown = cli("inspect", "busy-run", *flags).out.splitlines()
    assert "  api: 17 / 20 remaining" in shown and "Syscall log: 3 entries" in shown
