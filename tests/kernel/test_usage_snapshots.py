"""A long run's usage snapshots, written by the kernel itself (memory and SQLite stores, local executor).

Every ``USAGE_STRIDE``-th record carries the run's whole usage so far, and a resumed or forked run sums
only the records after the last one (``castor.checkpoint.usage_of``). A wrong snapshot would hand a
resumed run a wrong budget: these tests fail if a snapshot is missing, late, or counts the wrong steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from castor import Castor
from castor.backends.sqlite import sqlite_backend
from castor.checkpoint import USAGE_STRIDE, usage_of
from castor.lib import parallel, tool

STEPS = 2 * USAGE_STRIDE + 3  # two snapshots, and steps after the last


async def search(query: str) -> str:
    return query


async def agent() -> int:
    for i in range(STEPS):
        await tool("search", query=f"q{i}")
    return STEPS


async def wide_agent() -> int:
    # Calls at once: a snapshot step may finish before the steps ahead of it, and is then journaled
    # from the held records (castor.kernel.context.RunContext._drain).
    for start in range(0, STEPS, 5):
        await parallel(*(("search", {"query": f"q{i}"}) for i in range(start, min(start + 5, STEPS))))
    return STEPS


def snapshots(records: list) -> dict[int, dict[str, float]]:  # type: ignore[type-arg]
    return {step: dict(r.usage) for step, r in enumerate(records) if r.usage is not None}


@pytest.mark.parametrize("run_agent", [agent, wide_agent])
async def test_every_stride_ends_with_the_runs_usage_so_far(run_agent: object) -> None:
    castor = Castor(tools=[search])
    cp = await castor.run(run_agent, budgets={"api": 10_000, "search": 10_000})  # type: ignore[arg-type]
    assert cp.status == "COMPLETED", cp.error
    expected = {
        USAGE_STRIDE - 1: {"api": float(USAGE_STRIDE), "search": float(USAGE_STRIDE)},
        2 * USAGE_STRIDE - 1: {"api": 2.0 * USAGE_STRIDE, "search": 2.0 * USAGE_STRIDE},
    }
    assert snapshots(cp.syscall_log) == expected
    assert snapshots(await castor.backend.journal.history(cp.pid)) == expected
    assert usage_of(cp.syscall_log) == {"api": float(STEPS), "search": float(STEPS)}


async def wipe(target: str) -> str:
    return f"wiped {target}"


async def approved_agent() -> list[object]:
    for i in range(STEPS):
        await tool("search", query=f"q{i}")
    await tool("wipe", target="cache")  # waits for a human: the run resumes in another process
    return [await tool("search", query="one more"), await tool("search", query="one too many")]


async def test_a_long_run_resumed_in_a_new_process_spends_exactly_its_budget(tmp_path: Path) -> None:
    db = str(tmp_path / "castor.db")
    first = Castor(tools=[search, wipe], destructive=["wipe"], store=sqlite_backend(db))
    cp = await first.run(approved_agent, budgets={"search": STEPS + 1}, pid="long")
    assert cp.status == "SUSPENDED_FOR_HITL", cp.error
    await first.close()

    again = Castor(tools=[search, wipe], destructive=["wipe"], store=sqlite_backend(db))
    loaded = await again.aload("long")  # the journal read back from SQLite: snapshots and all
    assert snapshots(loaded.syscall_log) == snapshots(cp.syscall_log) != {}
    assert loaded.capabilities["search"].current_usage == STEPS
    await again.approve("long")
    done = await again.run(approved_agent, checkpoint=await again.aload("long"))
    assert done.status == "COMPLETED", done.error
    one_more, one_too_many = done.result  # type: ignore[misc]
    assert one_more == "one more"  # one search of the budget was left after the long stretch
    assert "INSUFFICIENT_CAPABILITY" in str(one_too_many)  # and no more
    await again.close()
