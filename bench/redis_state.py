"""Redis state: what Castor's Redis stores cost beside the bare Redis round trip they are built on.

    python bench/redis_state.py [--url redis://127.0.0.1:6379/0] [--runs 5]

Prints medians of ``--runs`` runs, each beside its baseline measured in the same run:
1. one budget charge through ``RedisBudgetStore`` vs a bare ``EVALSHA`` of a trivial script on a
   redis-py asyncio client (target: at most 1.3x); beside it, the same bare ``EVALSHA`` on the store's
   own lean connection, the floor under the charge (a charge is one ``EVALSHA`` on that connection);
2. 8 processes charging one shared scope vs 8 processes running the bare ``EVALSHA`` on redis-py
   (target: at least 80% of its rate), beside 8 processes running it on the lean connection and
   ``redis-benchmark -c 50`` on the same script;
3. round trips of a full embedded syscall on the Redis store, journal write + charge (target: <= 3);
4. replaying a 10,000-step run from Redis: ``history()`` in microseconds per step (target: <= 5),
   beside the memory journal's ``history()`` of the same records.
Keys live under a prefix of their own and are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import time
import uuid
from typing import Any

import redis
import redis.asyncio.connection as aioconnection
import redis.utils

from castor import Castor, castor_tool
from castor.backends.memory import memory_backend
from castor.backends.redis import redis_backend, resp
from castor.checkpoint import SyscallRecord
from castor.lib import tool

TRIVIAL = "return 1"
PROCESSES = 8


def median_of(values: list[float]) -> float:
    return statistics.median(values)


def load() -> str:
    """The 1-minute load average, printed beside every figure: the figures scale with it."""
    return f"[load {os.getloadavg()[0]:.2f}]"


# --- 1. one charge vs one bare EVALSHA ------------------------------------------------------------


def lean_of(budgets: Any) -> Any:
    """The store's lean connection (where its scripts go); the bench needs hiredis for it."""
    lean = budgets._conn.state().resp
    if lean is None:
        raise SystemExit("the Redis store has no lean connection here (hiredis missing, or not redis://)")
    return lean


async def charge_vs_evalsha(url: str, prefix: str, n: int) -> tuple[float, float, float]:
    """Seconds per charge, per bare redis-py ``EVALSHA``, per bare ``EVALSHA`` on the lean connection."""
    backend = redis_backend(url, prefix=prefix)
    budgets = backend.budgets
    await budgets.set_scope("team", {"api": 1e15})
    await budgets.open_run("bench", {"api": 1e15}, {})
    client = budgets._conn.client()  # type: ignore[attr-defined]  # the redis-py client the store holds
    sha = await client.script_load(TRIVIAL)
    await budgets.charge("bench", -1, {"api": 1}, ["team"])  # scripts loaded, connections warm
    lean = lean_of(budgets)
    step = int(time.time() * 1000) % 1_000_000 * 10_000

    async def bare_half() -> tuple[float, float]:
        started = time.perf_counter()
        for _ in range(n // 4):
            await client.evalsha(sha, 0)
        middle = time.perf_counter()
        for _ in range(n // 4):
            await lean.call("EVALSHA", sha, 0)
        return middle - started, time.perf_counter() - middle

    # The bare round trips are taken half before, half after the charges: a load that drifts while the
    # run lasts weighs on both sides alike.
    py_before, lean_before = await bare_half()
    started = time.perf_counter()
    for i in range(n):
        await budgets.charge("bench", step + i, {"api": 1}, ["team"])
    charge = (time.perf_counter() - started) / n
    py_after, lean_after = await bare_half()
    await budgets.close_run("bench")
    await backend.close()
    return charge, (py_before + py_after) / (n // 4 * 2), (lean_before + lean_after) / (n // 4 * 2)


# --- 2. eight processes ---------------------------------------------------------------------------


def hammer(url: str, prefix: str, mode: str, n: int, start_at: float) -> tuple[float, float]:
    """Run ``n`` charges (or bare EVALSHAs on redis-py, or on the lean connection) from a fresh process;
    returns its (start, end) times."""

    async def main() -> tuple[float, float]:
        backend = redis_backend(url, prefix=prefix)
        budgets = backend.budgets
        client = budgets._conn.client()  # type: ignore[attr-defined]
        sha = await client.script_load(TRIVIAL)
        run_id = f"hammer-{uuid.uuid4().hex[:8]}"
        await budgets.charge(run_id, -1, {"api": 1}, ["shared"])
        lean = lean_of(budgets)
        while time.time() < start_at:  # every process starts together
            await asyncio.sleep(0.001)
        begun = time.time()
        if mode == "charge":
            for step in range(n):
                await budgets.charge(run_id, step, {"api": 1}, ["shared"])
        elif mode == "lean":
            for _ in range(n):
                await lean.call("EVALSHA", sha, 0)
        else:
            for _ in range(n):
                await client.evalsha(sha, 0)
        ended = time.time()
        await budgets.close_run(run_id)
        await backend.close()
        return begun, ended

    return asyncio.run(main())


def aggregate_rate(pool: Any, url: str, prefix: str, mode: str, n: int) -> float:
    start_at = time.time() + 0.5
    spans = pool.starmap(hammer, [(url, prefix, mode, n, start_at)] * PROCESSES, chunksize=1)
    return PROCESSES * n / (max(e for _, e in spans) - min(b for b, _ in spans))


def redis_benchmark_rate(url: str) -> float | None:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    parts = redis.connection.parse_url(url)
    client = redis.Redis.from_url(url)
    sha = client.script_load(TRIVIAL)
    client.close()
    command = [binary, "-h", str(parts.get("host", "127.0.0.1")), "-p", str(parts.get("port", 6379)),
               "-n", "100000", "-c", "50", "-q", "EVALSHA", sha, "0"]
    if parts.get("password"):
        command[1:1] = ["-a", str(parts["password"])]
    out = subprocess.run(command, capture_output=True, text=True, check=False).stdout
    found = re.findall(r"([\d.]+) requests per second", out)
    return float(found[-1]) if found else None


# --- 3. round trips of a syscall ------------------------------------------------------------------


@castor_tool(consumes="api", cost_per_use=1)
def add(a: int, b: int) -> int:
    """A tool that costs one unit of ``api``."""
    return a + b


async def syscall_round_trips(url: str, prefix: str) -> int:
    """Round trips of one syscall: redis-py's sends and the lean connection's writes, counted alike."""
    sends = [0]
    original = aioconnection.AbstractConnection.send_packed_command
    flush = resp._Protocol._flush

    async def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sends[0] += 1
        await original(self, command, check_health)

    def counting_flush(self: Any) -> None:
        sends[0] += 1
        flush(self)

    backend = redis_backend(url, prefix=prefix)
    kernel = Castor(tools=[add], budgets={"api": 1000}, store=backend, scopes=["team"])
    await backend.budgets.set_scope("team", {"api": 1e9})
    per_call: list[int] = []

    async def agent() -> None:
        await tool("add", a=0, b=0)  # warm: connection made, scripts loaded
        for i in range(20):
            sends[0] = 0
            await tool("add", a=i, b=1)
            per_call.append(sends[0])

    aioconnection.AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    resp._Protocol._flush = counting_flush  # type: ignore[method-assign]
    try:
        await kernel.run(agent)
    finally:
        aioconnection.AbstractConnection.send_packed_command = original  # type: ignore[method-assign]
        resp._Protocol._flush = flush  # type: ignore[method-assign]
    await kernel.close()
    return max(per_call)


# --- 4. replay ------------------------------------------------------------------------------------


def a_record(i: int) -> SyscallRecord:
    return SyscallRecord(
        request={"tool_name": "add", "arguments": {"a": i, "b": 1}}, response=i + 1, charged={"api": 1.0},
        finished_at=1_700_000_000.0 + i,
    )


async def replay(url: str, prefix: str, steps: int, runs: int) -> tuple[list[float], list[float]]:
    backend = redis_backend(url, prefix=prefix)
    memory = memory_backend()
    records = [a_record(i) for i in range(steps)]
    for first in range(0, steps, 500):
        await asyncio.gather(*(backend.journal.append("replay", i, records[i]) for i in range(first, first + 500)))
        for i in range(first, first + 500):
            await memory.journal.append("replay", i, records[i])
    redis_times, memory_times = [], []
    for _ in range(runs):
        started = time.perf_counter()
        got = await backend.journal.history("replay")
        redis_times.append((time.perf_counter() - started) / steps)
        started = time.perf_counter()
        await memory.journal.history("replay")
        memory_times.append((time.perf_counter() - started) / steps)
        if got != records:
            raise SystemExit("replay returned other records than were written")
    await backend.close()
    return redis_times, memory_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--charges", type=int, default=2000, help="charges per run of the single-client test")
    parser.add_argument("--per-process", type=int, default=1500, help="operations per process, 8 processes")
    args = parser.parse_args()
    prefix = f"castorbench-{uuid.uuid4().hex[:12]}"
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (figures scale with it); "
          f"redis-py {redis.__version__}, hiredis parser: {'yes' if redis.utils.HIREDIS_AVAILABLE else 'NO'}")
    try:
        ratios, floor_ratios, charge_us, bare_us, lean_us = [], [], [], [], []
        for _ in range(args.runs):
            charge, bare, lean = asyncio.run(charge_vs_evalsha(args.url, prefix, args.charges))
            charge_us.append(charge * 1e6)
            bare_us.append(bare * 1e6)
            lean_us.append(lean * 1e6)
            ratios.append(charge / bare)
            floor_ratios.append(charge / lean)
        print(f"1. budget charge (run + 1 scope): {median_of(charge_us):.0f} us; bare EVALSHA on redis-py asyncio: "
              f"{median_of(bare_us):.0f} us; ratio {median_of(ratios):.2f}x (target <= 1.3x) {load()}\n"
              f"   beside it, bare EVALSHA on the store's lean connection: {median_of(lean_us):.0f} us "
              f"(the charge is {median_of(floor_ratios):.2f}x that floor)")

        sync = redis.Redis.from_url(args.url)
        sync.hset(f"{prefix}:scope:{{shared}}", mapping={"L:api": 1e15, "U:api": 0})
        sync.close()
        with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
            rates: dict[str, list[float]] = {"charge": [], "evalsha": [], "lean": []}
            shares, floor_shares = [], []
            for run in range(args.runs):
                # the order turns every run: a drifting load favours no side
                order = list(rates)[run % 3:] + list(rates)[: run % 3]
                got = {mode: aggregate_rate(pool, args.url, prefix, mode, args.per_process) for mode in order}
                for mode, rate in got.items():
                    rates[mode].append(rate)
                shares.append(got["charge"] / got["evalsha"])
                floor_shares.append(got["charge"] / got["lean"])
        bench_rate = redis_benchmark_rate(args.url)
        beside = f"; redis-benchmark -c 50 EVALSHA: {bench_rate:,.0f}/s" if bench_rate else ""
        print(f"2. 8 processes on one scope: {median_of(rates['charge']):,.0f} charges/s; 8 processes bare EVALSHA "
              f"on redis-py: {median_of(rates['evalsha']):,.0f}/s; {median_of(shares):.0%} of it (target >= 80%) "
              f"{load()}\n   beside it, 8 processes bare EVALSHA on the lean connection: "
              f"{median_of(rates['lean']):,.0f}/s (the charges reach {median_of(floor_shares):.0%} of that floor)"
              f"{beside}")

        trips = asyncio.run(syscall_round_trips(args.url, prefix))
        print(f"3. round trips of one embedded syscall (charge + journal write): {trips} (target <= 3) {load()}")

        redis_times, memory_times = asyncio.run(replay(args.url, prefix, 10_000, args.runs))
        print(f"4. replay of a 10,000-step run from Redis: {median_of(redis_times) * 1e6:.2f} us/step "
              f"(memory journal: {median_of(memory_times) * 1e6:.2f} us/step) (target <= 5) {load()}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        sync = redis.Redis.from_url(args.url)
        names = list(sync.scan_iter(match=f"{prefix}:*", count=1000))
        for first in range(0, len(names), 1000):
            sync.delete(*names[first : first + 1000])
        sync.close()


if __name__ == "__main__":
    main()
