"""The measured workload of ``bench/kernel.py``, run once per implementation in its own process.

It imports whichever ``castor`` the interpreter finds: this project (run with the project's venv) or
the published castor-kernel 0.5.1 (run with ``bench/.refvenv``). Both expose the same API, so the
same code measures both. It prints one JSON object of figures on stdout; ``bench/kernel.py`` reads it.

Every figure is the median of ``--repeat`` repetitions. A repetition makes its own kernel, so the
store holds only what that repetition produced.

    python bench/_workload.py [--calls 10000] [--repeat 5] [--sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import castor
from castor import Castor, castor_tool
from castor.lib import tool

BUDGET = {"api": 1e9}
RAW_TABLE = "CREATE TABLE j (run_id TEXT, step INTEGER, record TEXT, PRIMARY KEY (run_id, step)) WITHOUT ROWID"


async def noop(i: int) -> int:
    """The no-op async tool every figure calls."""
    return i


@castor_tool(consumes="api", cost_per_use=1.0)
async def noop_paid(i: int) -> int:
    """The same no-op, declared with a cost: the only kind of tool castor-kernel 0.5.1 charges."""
    return i


class Workload:
    """Agents whose loop times itself, so a figure covers the calls and nothing around them."""

    def __init__(self, calls: int) -> None:
        self.calls = calls
        self.elapsed = 0.0  # wall-clock seconds of the last agent loop
        self.cpu = 0.0  # CPU seconds of this process in that loop: what a busy machine inflates least

    def agent(self, tool_name: str) -> Callable[[], Awaitable[str]]:
        """An agent that calls ``tool_name`` ``calls`` times and records how long the loop took."""
        calls = self.calls

        async def bench_agent() -> str:
            start, cpu = time.perf_counter(), time.process_time()
            for i in range(calls):
                await tool(tool_name, i=i)
            self.elapsed, self.cpu = time.perf_counter() - start, time.process_time() - cpu
            return "done"

        return bench_agent

    async def direct(self) -> tuple[float, float]:
        """Wall and CPU seconds for ``calls`` awaits of the tool function itself: the baseline."""
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(self.calls):
            await noop(i=i)
        return time.perf_counter() - start, time.process_time() - cpu


def us_per_call(seconds: float, calls: int) -> float:
    return seconds / calls * 1e6


def median(values: list[float]) -> float:
    return statistics.median(values)


async def measure_direct(w: Workload, repeat: int) -> dict[str, list[float]]:
    """µs per direct await, wall and CPU."""
    out: dict[str, list[float]] = {"wall": [], "cpu": []}
    for _ in range(repeat):
        wall, cpu = await w.direct()
        out["wall"].append(us_per_call(wall, w.calls))
        out["cpu"].append(us_per_call(cpu, w.calls))
    return out


async def measure_syscall(
    w: Workload, repeat: int, tool_name: str, budgets: dict[str, float] | None, store: Callable[[int], Any]
) -> dict[str, list[float]]:
    """µs per live syscall, wall and CPU: the agent's loop, one fresh kernel per repetition."""
    samples: dict[str, list[float]] = {"wall": [], "cpu": []}
    for rep in range(repeat):
        kernel = Castor(tools=[noop, noop_paid], **store(rep))
        cp = await kernel.run(w.agent(tool_name), budgets=budgets)
        check_complete(cp, w.calls)
        samples["wall"].append(us_per_call(w.elapsed, w.calls))
        samples["cpu"].append(us_per_call(w.cpu, w.calls))
        await close(kernel)
        del kernel, cp
        gc.collect()
    return samples


async def measure_replay(w: Workload, repeat: int, tool_name: str, budgets: dict[str, float] | None) -> dict[str, Any]:
    """µs per replayed step: ``run(agent, checkpoint=cp)`` of a completed run, whole call timed."""
    whole, loop, cpu = [], [], []
    for _ in range(repeat):
        kernel = Castor(tools=[noop, noop_paid])
        agent = w.agent(tool_name)
        cp = await kernel.run(agent, budgets=budgets)
        check_complete(cp, w.calls)
        gc.collect()
        start, cpu_start = time.perf_counter(), time.process_time()
        cp = await kernel.run(agent, checkpoint=cp)
        whole.append(us_per_call(time.perf_counter() - start, w.calls))
        cpu.append(us_per_call(time.process_time() - cpu_start, w.calls))
        loop.append(us_per_call(w.elapsed, w.calls))
        check_complete(cp, w.calls)
        await close(kernel)
        del kernel, cp
        gc.collect()
    return {"wall": whole, "cpu": cpu, "loop": loop}


async def measure_fork(
    w: Workload, repeat: int, tool_name: str, budgets: dict[str, float] | None, at_steps: list[int]
) -> dict[str, list[Any]]:
    """ms per ``cp.fork(at_step=N)``; every repetition forks a checkpoint fresh from its own run.

    ``<N>_usage`` keeps the fork's ``api`` usage: N for ours; 0.5.1 keeps the parent's whole usage.
    """
    out: dict[str, list[Any]] = {str(at): [] for at in at_steps}
    for _ in range(repeat):
        for at in at_steps:
            kernel = Castor(tools=[noop, noop_paid])
            cp = await kernel.run(w.agent(tool_name), budgets=budgets)
            check_complete(cp, w.calls)
            gc.collect()
            start = time.perf_counter()
            forked = cp.fork(at_step=at)
            out[str(at)].append((time.perf_counter() - start) * 1e3)
            used = forked.capabilities["api"].current_usage if "api" in forked.capabilities else None
            out.setdefault(f"{at}_usage", []).append(used)
            await close(kernel)
            del kernel, cp, forked
            gc.collect()
    return out


SQLITE_PRAGMAS = ("journal_mode", "synchronous", "wal_autocheckpoint")


async def sqlite_baseline(calls: int, repeat: int, directory: str) -> dict[str, Any]:
    """µs per committed insert of a journal-sized row with plain ``sqlite3`` and our store's pragmas."""
    kernel = Castor(tools=[noop], store=f"sqlite:///{os.path.join(directory, 'pragmas.db')}")
    conn = kernel.backend.journal.db.conn  # type: ignore[attr-defined]  # bench only: read, never changed
    pragmas = {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in SQLITE_PRAGMAS}
    await close(kernel)
    row = json.dumps({"request": {"tool_name": "noop", "arguments": {"i": 0}}, "response": 0, "charged": {"api": 1}})
    samples = []
    for rep in range(repeat):
        conn = sqlite3.connect(os.path.join(directory, f"raw-{rep}.db"), isolation_level=None)
        for name, value in pragmas.items():
            conn.execute(f"PRAGMA {name}={value}")
        conn.execute(RAW_TABLE)
        start = time.perf_counter()
        for step in range(calls):
            conn.execute("INSERT INTO j VALUES (?, ?, ?)", ("run", step, row))
        samples.append(us_per_call(time.perf_counter() - start, calls))
        conn.close()
    return {"us": samples, "pragmas": pragmas}


def check_complete(cp: Any, calls: int) -> None:
    if cp.status != "COMPLETED" or len(cp.syscall_log) != calls:
        raise SystemExit(f"benchmark run did not complete: {cp.status}, {len(cp.syscall_log)} steps")


async def close(kernel: Any) -> None:
    closer = getattr(kernel, "close", None)  # castor-kernel 0.5.1 has none
    if closer is not None:
        await closer()


async def main_async(calls: int, repeat: int, with_sqlite: bool) -> dict[str, Any]:
    ours = not castor.__version__.startswith("0.5.")
    w = Workload(calls)
    # The charged tool: ours charges every call 1 "api" by default; 0.5.1 charges only declared costs.
    charged_tool = "noop" if ours else "noop_paid"

    def memory(rep: int) -> dict[str, str]:
        return {}  # the default store

    # Warm up: imports, schema and code paths, so the first repetition is not an outlier.
    warm = Workload(min(calls, 500))
    await measure_syscall(warm, 1, charged_tool, BUDGET, memory)
    await measure_replay(warm, 1, charged_tool, BUDGET)
    figures: dict[str, Any] = {
        "castor_version": castor.__version__,
        "castor_file": castor.__file__,
        "python": sys.version.split()[0],
        "calls": calls,
        "repeat": repeat,
        "direct_us": await measure_direct(w, repeat),
        "plain_us": await measure_syscall(w, repeat, "noop", None, memory),
        "charged_us": await measure_syscall(w, repeat, charged_tool, BUDGET, memory),
        "replay_us": await measure_replay(w, repeat, charged_tool, BUDGET),
        "fork_ms": await measure_fork(w, repeat, charged_tool, BUDGET, [calls // 2, calls]),
    }
    if with_sqlite:
        with tempfile.TemporaryDirectory(prefix="castor-bench-") as directory:

            def sqlite_store(rep: int) -> dict[str, str]:
                return {"store": f"sqlite:///{os.path.join(directory, f'bench-{rep}.db')}"}

            figures["sqlite_us"] = await measure_syscall(w, repeat, charged_tool, BUDGET, sqlite_store)
            if ours:  # every plain call claimed before it runs (castor.seams.Backend.at_most_once)

                def claimed_store(rep: int) -> dict[str, str]:
                    return {"store": f"sqlite:///{os.path.join(directory, f'once-{rep}.db')}?at_most_once=1"}

                figures["sqlite_once_us"] = await measure_syscall(w, repeat, charged_tool, BUDGET, claimed_store)
            baseline = await sqlite_baseline(calls, repeat, directory)
            figures["sqlite_insert_us"] = baseline["us"]
            figures["sqlite_pragmas"] = baseline["pragmas"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sqlite", action="store_true", help="also measure the SQLite store (ours only)")
    args = parser.parse_args()
    figures = asyncio.run(main_async(args.calls, args.repeat, args.sqlite))
    json.dump(figures, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
