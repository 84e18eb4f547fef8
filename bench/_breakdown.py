"""Where a syscall's time goes (``python bench/kernel.py --profile``): ours only, nothing written.

Three views, each measured here and now:

1. The syscall handler chain built stage by stage: the agent's loop with only the first k stages and a stub tool
   behind them, so each line's increment is what that stage adds, in real time (no profiler).
2. The pieces of the innermost step (execute + journal) and of the SQLite journal write, timed alone.
3. cProfile of a whole charged run, by own time: the ranking, not the absolute figures (the profiler
   multiplies the cost of every Python call several times over).
"""

from __future__ import annotations

import asyncio
import cProfile
import dataclasses
import gc
import io
import os
import pstats
import sqlite3
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable
from typing import Any

from _workload import BUDGET, RAW_TABLE, Workload, noop, us_per_call

from castor import Castor
from castor.backends.memory import MemoryBudgetStore, MemoryJournal
from castor.checkpoint import new_record
from castor.kernel.chain import KERNEL_STAGES, execute, wrap
from castor.kernel.context import Syscall
from castor.kernel.steps import replay
from castor.seams import ToolCall

STAGES = [replay, *KERNEL_STAGES]


async def _stub(call: Syscall) -> Any:
    return 0


async def stages(calls: int, repeat: int) -> None:
    """View 1: the agent loop through the first k stages."""
    w = Workload(calls)
    names = [stage.__name__ for stage in STAGES]
    levels: list[tuple[str, int, Any]] = [("tool() + Syscall, stub chain", 0, _stub)]
    levels += [(f"+ {name}", k + 1, _stub) for k, name in enumerate(names)]
    levels.append(("+ execute (tool, journal)", len(names), execute))
    samples: dict[str, list[float]] = {"direct await of the tool": []}
    for _ in range(repeat):
        samples["direct await of the tool"].append(us_per_call((await w.direct())[0], calls))
        for label, k, terminal in levels:
            kernel = Castor(tools=[noop])
            # a benchmark's own chain: the first k stages around a stub or the real terminal
            kernel.services = dataclasses.replace(kernel.services, chain=wrap(STAGES[:k], terminal))
            await kernel.run(w.agent("noop"), budgets=BUDGET)
            samples.setdefault(label, []).append(us_per_call(w.elapsed, calls))
            await kernel.close()
            gc.collect()
    print(f"1. the syscall handler chain stage by stage, charged, memory store ({calls:,} calls, median of {repeat})")
    previous = None
    for label, values in samples.items():
        value = statistics.median(values)
        step = "" if previous is None else f"{value - previous:+6.2f}"
        print(f"   {label:34s} {value:6.2f} µs  {step}")
        previous = value


def _timed(label: str, fn: Callable[[], Any], number: int = 100_000) -> None:
    best = min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6
    print(f"   {label:52s} {best:6.2f} µs")


def _drive(coro: Any) -> Any:
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("the coroutine waited for something")


async def _value() -> int:
    return 1


def pieces(sqlite: bool) -> None:
    """View 2: the pieces of a live step, each alone (best of 5)."""
    print("2. pieces of one live step, timed alone")
    request = {"tool_name": "noop", "arguments": {"i": 1}}
    _timed("create and finish a coroutine (each async stage pays it)", lambda: _drive(_value()))
    _timed("ToolCall(...) (the value a step's call is)", lambda: ToolCall("run", 1, "noop", {"i": 1}))
    _timed("new_record(...) (the journal record)", lambda: new_record(request, 1, charged=BUDGET, finished_at=1.0))
    journal = MemoryJournal()
    steps = iter(range(10**9))
    _timed("MemoryJournal.append", lambda: _drive(journal.append("run", next(steps), None)))  # type: ignore[arg-type]
    budgets = MemoryBudgetStore()
    _drive(budgets.open_run("run", {"api": 1e12}, {}))
    _timed("MemoryBudgetStore.charge", lambda: _drive(budgets.charge("run", next(steps), {"api": 1.0}, ())))
    if not sqlite:
        return
    record = new_record(request, 1, charged={"api": 1.0}, finished_at=time.time())
    _timed("record.model_dump_json (SQLite row)", lambda: record.model_dump_json(exclude_defaults=True, fallback=repr))
    with tempfile.TemporaryDirectory(prefix="castor-profile-") as directory:
        conn = sqlite3.connect(os.path.join(directory, "raw.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(RAW_TABLE)
        row = record.model_dump_json(exclude_defaults=True)
        _timed("raw sqlite3 committed insert (WAL, NORMAL)", lambda: conn.execute(
            "INSERT INTO j VALUES (?, ?, ?)", ("run", next(steps), row)), number=5_000)
        conn.close()
        kernel = Castor(tools=[noop], store=f"sqlite:///{os.path.join(directory, 'k.db')}")
        sql_journal = kernel.backend.journal
        _timed("SqliteJournal.append (dump + insert)",
               lambda: _drive(sql_journal.append("run", next(steps), record)), number=5_000)
        asyncio.run(kernel.close())


async def profile(calls: int, store: str | None) -> str:
    """View 3: cProfile of one charged run."""
    w = Workload(calls)
    kernel = Castor(tools=[noop], store=store)
    await kernel.run(w.agent("noop"), budgets=BUDGET)  # warm
    profiler = cProfile.Profile()
    profiler.enable()
    await kernel.run(w.agent("noop"), budgets=BUDGET)
    profiler.disable()
    await kernel.close()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(18)
    return out.getvalue()


def main(calls: int, repeat: int, *, sqlite: bool) -> None:
    """Print the three views."""
    asyncio.run(stages(calls, repeat))
    print()
    pieces(sqlite)
    print()
    print("3. cProfile of a charged run, memory store, by own time (inflated by the profiler; read the ranking)")
    print(asyncio.run(profile(calls, None)))
    if sqlite:
        with tempfile.TemporaryDirectory(prefix="castor-profile-") as directory:
            print("3b. the same with the SQLite store")
            print(asyncio.run(profile(calls, f"sqlite:///{os.path.join(directory, 'p.db')}")))
