"""The fleet: coordinators and worker pools as real processes on the local Redis (private prefix, deleted after).

    python bench/fleet.py [--repeat 3] [--runs 200] [--parked 10000]

Prints, with medians of ``--repeat`` runs where a figure is repeated:

1. throughput: runs/s and syscalls/s of ``--runs`` runs (4 calls each, on pools web and fs) with one
   coordinator, then with two on the same pools, and the scaling ratio;
2. approval latency: from the decision ``castor approve`` records to the resumed run's next syscall
   journaled (p50 of 20), beside the CLI's own wall time (its start-up, measured separately);
3. takeover: how long after a coordinator is SIGKILLed each of its runs is driven by another, beside
   the lease time;
4. parked runs: ``--parked`` runs waiting for approval: the coordinator's CPU over a 5 s idle window
   and its RSS growth per parked run, beside the same idle window before any run was parked.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from castor.backends.redis import keys, redis_backend
from castor.fleet.client import FleetClient, new_run
from tests.fleet.procs import Fleet, agent_spec, tool_spec

REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
TOOLS = [tool_spec(n) for n in ("ticket", "fetch", "store", "remove")]


def completed(fleet: Fleet) -> int:
    return int(fleet.redis.zcard(keys.runs_by_status(fleet.prefix, "COMPLETED")))


def wait(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)


async def submit(fleet: Fleet, agent: str, n: int) -> list[str]:
    backend = redis_backend(fleet.url, prefix=fleet.prefix)
    client = FleetClient(fleet.url, fleet.prefix)
    try:
        pids = []
        for _ in range(n):
            pids.append(await client.submit(backend, new_run(agent_spec(agent), TOOLS, budgets={"api": 100})))
        return pids
    finally:
        await client.close()
        await backend.close()


def new_fleet() -> Fleet:
    return Fleet(REDIS, Path(tempfile.mkdtemp(prefix="castor-bench-")))


# --- 1. throughput ------------------------------------------------------------------------------------


def throughput(coordinators: int, runs: int) -> tuple[float, float]:
    """(runs/s, syscalls/s) of ``runs`` quick runs with that many coordinators on pools web (8) and fs (4)."""
    fleet = new_fleet()
    try:
        fleet.worker("web", 8)
        fleet.worker("fs", 4)
        for i in range(coordinators):
            fleet.coordinator(f"co-{i}", concurrency=100, lease=15.0)
        asyncio.run(submit(fleet, "quick_job", 5))  # warm-up: imports, connections, scripts
        wait("warm-up", lambda: completed(fleet) == 5, 60)
        client = fleet.redis
        client.delete(keys.runs_by_status(fleet.prefix, "COMPLETED"))
        # Queue everything first, then let the coordinators take it: the figure is theirs, not submit's.
        for name in fleet.procs:
            if name.startswith("co-"):
                fleet.procs[name].send_signal(signal.SIGSTOP)
        asyncio.run(submit(fleet, "quick_job", runs))
        start = time.perf_counter()
        for name in fleet.procs:
            if name.startswith("co-"):
                fleet.procs[name].send_signal(signal.SIGCONT)
        wait("all runs", lambda: completed(fleet) >= runs, 300)
        took = time.perf_counter() - start
        return runs / took, runs * 4 / took
    finally:
        fleet.close()


# --- 2. approve -> next syscall -------------------------------------------------------------------------


async def decision_to_next_step(fleet: Fleet, pid: str) -> float:
    backend = redis_backend(fleet.url, prefix=fleet.prefix)
    try:
        decision = await backend.approvals.decision(pid, 0)
        record = await backend.journal.get(pid, 0)
        if decision is None or record is None or record.finished_at is None:
            raise RuntimeError(f"{pid}: no decision or no step 0")
        return record.finished_at - decision.at
    finally:
        await backend.close()


def approval_latency(samples: int) -> tuple[float, float, float]:
    """(p50 decision -> approved call journaled, p50 CLI wall time of approve, p50 CLI start-up)."""
    fleet = new_fleet()
    try:
        fleet.worker("web", 4)
        fleet.worker("fs", 4)
        fleet.coordinator("co-0", concurrency=50)
        pids = asyncio.run(submit(fleet, "approve_then_go", samples + 2))
        wait("all parked", lambda: fleet.redis.hlen(keys.parked(fleet.prefix)) == len(pids), 60)
        latencies, walls, startups = [], [], []
        for pid in pids:
            t0 = time.perf_counter()
            fleet.cli("approve", pid, "--store", fleet.url)
            walls.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            fleet.cli("--help")  # the CLI's start-up: the interpreter, castor and its parser
            startups.append(time.perf_counter() - t0)
        wait("all done", lambda: completed(fleet) == len(pids), 60)
        for pid in pids[2:]:  # the first two warm the coordinator's paths
            latencies.append(asyncio.run(decision_to_next_step(fleet, pid)))
        return statistics.median(latencies), statistics.median(walls[2:]), statistics.median(startups[2:])
    finally:
        fleet.close()


# --- 3. takeover ----------------------------------------------------------------------------------------


def takeover(lease: float, runs: int = 5) -> float:
    """The longest time from SIGKILL of a coordinator to another coordinator holding each of its runs."""
    fleet = new_fleet()
    try:
        fleet.worker("web", 8)
        fleet.worker("fs", 4)
        fleet.coordinator("co-a", lease=lease, concurrency=runs)
        pids = asyncio.run(submit(fleet, "slow_job", runs))
        wait("co-a to drive them", lambda: all(
            str(fleet.redis.get(keys.lease(fleet.prefix, p)) or "").startswith("co-a/") for p in pids), 30)
        fleet.coordinator("co-b", lease=lease, concurrency=runs)
        time.sleep(lease / 3 + 0.05)  # co-a's last renewal happens at some point of its cycle
        fleet.stop("co-a", signal.SIGKILL)
        killed = time.perf_counter()
        taken: dict[str, float] = {}
        while len(taken) < runs and time.perf_counter() - killed < 4 * lease + 10:
            for pid in pids:
                holder = str(fleet.redis.get(keys.lease(fleet.prefix, pid)) or "")
                if pid not in taken and holder.startswith("co-b/"):
                    taken[pid] = time.perf_counter() - killed
            time.sleep(0.01)
        return max(taken.values()) if len(taken) == runs else float("inf")
    finally:
        fleet.close()


# --- 4. parked runs ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def idle_cpu(pid: int, seconds: float = 5.0) -> float:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


def parked_runs(n: int) -> dict[str, float]:
    """The coordinator's idle CPU and RSS with ``n`` runs parked, beside the same with none."""
    fleet = new_fleet()
    try:
        proc = fleet.coordinator("co-0", executor="local", concurrency=200, lease=15.0)
        asyncio.run(submit(fleet, "park_only", 200))  # warm-up: the paths a parked run takes
        wait("warm-up", lambda: fleet.redis.hlen(keys.parked(fleet.prefix)) == 200, 120)
        time.sleep(1.0)
        base_cpu = idle_cpu(proc.pid)
        base_rss = rss_bytes(proc.pid)
        start = time.perf_counter()
        asyncio.run(submit(fleet, "park_only", n))
        wait("all parked", lambda: fleet.redis.hlen(keys.parked(fleet.prefix)) == n + 200, 1200)
        took = time.perf_counter() - start
        time.sleep(1.0)
        cpu = idle_cpu(proc.pid)
        rss = rss_bytes(proc.pid)
        return {"base_cpu": base_cpu, "cpu": cpu, "base_rss": base_rss, "rss": rss,
                "per_run": (rss - base_rss) / n, "park_rate": n / took}
    finally:
        fleet.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--parked", type=int, default=10_000)
    parser.add_argument("--only", choices=("throughput", "approve", "takeover", "parked"), default=None)
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    if args.only in (None, "throughput"):
        one = [throughput(1, args.runs) for _ in range(args.repeat)]
        two = [throughput(2, args.runs) for _ in range(args.repeat)]
        r1, s1 = statistics.median(r for r, _ in one), statistics.median(s for _, s in one)
        r2, s2 = statistics.median(r for r, _ in two), statistics.median(s for _, s in two)
        for label, rate, calls, each in (("1 coordinator: ", r1, s1, one), ("2 coordinators:", r2, s2, two)):
            print(f"throughput, {label} {rate:7.1f} runs/s  {calls:7.1f} syscalls/s   "
                  f"(runs: {[round(r, 1) for r, _ in each]})")
        print(f"scaling ratio 2/1: {r2 / r1:.2f}")
    if args.only in (None, "approve"):
        lat, wall, startup = approval_latency(20)
        print(f"approve: decision -> resumed run's next syscall journaled, p50 {lat * 1000:.1f} ms "
              f"(target < 50 ms); the CLI itself: approve {wall * 1000:.0f} ms, "
              f"start-up (--help) {startup * 1000:.0f} ms")
    if args.only in (None, "takeover"):
        for lease in (2.0,):
            worst = [takeover(lease) for _ in range(max(1, args.repeat - 1))]
            print(f"takeover: lease {lease:g}s, a killed coordinator's runs driven elsewhere after at most "
                  f"{statistics.median(worst):.2f}s (median of {len(worst)}: {[round(w, 2) for w in worst]}; "
                  f"target <= {lease + 1:g}s)")
    if args.only in (None, "parked"):
        p = parked_runs(args.parked)
        print(f"parked: {args.parked} runs parked at {p['park_rate']:.0f} runs/s; idle CPU over 5 s: "
              f"{p['cpu'] * 1000:.0f} ms with them, {p['base_cpu'] * 1000:.0f} ms before (200 parked); "
              f"RSS {p['base_rss'] / 2**20:.1f} -> {p['rss'] / 2**20:.1f} MiB = "
              f"{p['per_run']:.0f} bytes per parked run")


if __name__ == "__main__":
    main()
