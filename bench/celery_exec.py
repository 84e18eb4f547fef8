"""Celery execution: Castor's syscall through a Celery pool beside raw Celery on the same broker and pool.

    python bench/celery_exec.py [--repeat 3] [--agents 200] [--calls 50] [--curve 10,100,500,2000]
                                [--only latency,throughput,cpu]

Starts two worker processes with a pool of 8 threads each, on the local Redis (127.0.0.1:6379) under a
private prefix deleted afterwards: Castor's (``python -m castor.fleet.workers worker``) and raw Celery's (``celery
worker``, Redis broker and result backend). Prints, for each figure, the median of ``--repeat`` runs:

1. latency: p50 of one syscall through the kernel vs raw ``apply_async().get()`` of a no-op task;
2. throughput: ``--agents`` concurrent agents x ``--calls`` syscalls on one coordinator vs raw Celery
   pushing as many no-op tasks and gathering their results;
3. CPU: the coordinator's process CPU per live syscall vs the caller's CPU per raw task, at each
   number of concurrent agents of ``--curve`` (10 syscalls per agent, at least 2,000 per sample), each
   sample paired with a raw sample taken just before it; then the spread of the curve.

Each line ends with the load average when it was printed (the machine may be shared).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

import castor.lib as lib
from bench._celery_fixtures import ROOT, celery_cmd, raw_app, start
from castor import Castor
from castor.executors.celery import fleet_options
from castor.settings import load_settings

REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
CONFIG = """
[redis]
url = "{redis}"
prefix = "{prefix}"
[broker]
url = "{redis}"
queue_prefix = "{prefix}q"
[security]
secret = "{secret}"
[tools]
import = ["{tools}:noop"]
[pools]
bench = ["noop"]
"""


async def castor_latency(kernel: Castor, n: int) -> float:
    times: list[float] = []

    async def agent() -> None:
        for _ in range(n):
            t = time.perf_counter()
            await lib.tool("noop")
            times.append(time.perf_counter() - t)

    await kernel.run(agent)
    return statistics.median(times[5:])  # the first calls open connections


def raw_latency(app: Any, n: int) -> float:
    task = app.tasks["raw.noop"]
    times = []
    for _ in range(n):
        t = time.perf_counter()
        task.apply_async().get(timeout=30)
        times.append(time.perf_counter() - t)
    return statistics.median(times[5:])


async def castor_batch(kernel: Castor, agents: int, calls: int) -> tuple[float, float]:
    """(seconds, process CPU seconds) of ``agents`` concurrent agents making ``calls`` syscalls each."""

    async def agent() -> None:
        for _ in range(calls):
            await lib.tool("noop")

    cpu, wall = time.process_time(), time.perf_counter()
    done = await asyncio.gather(*(kernel.run(agent) for _ in range(agents)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    failed = [cp.error for cp in done if cp.status != "COMPLETED"]
    if failed:
        raise RuntimeError(f"{len(failed)} runs failed, e.g. {failed[0]}")
    return wall, cpu


async def castor_cpu(kernel: Castor, agents: int) -> float:
    """Process CPU seconds per syscall of ``agents`` concurrent agents, in runs of 10 calls each: at least
    2,000 calls per sample, so that one full garbage collection does not dominate 10 agents' 100 calls."""
    rounds = max(1, -(-2000 // (agents * 10)))
    cpu = 0.0
    for _ in range(rounds):
        cpu += (await castor_batch(kernel, agents, 10))[1]
    return cpu / (rounds * agents * 10)


def raw_batch(app: Any, total: int) -> tuple[float, float]:
    """(seconds, caller CPU seconds) of pushing ``total`` no-op tasks and gathering their results."""
    task = app.tasks["raw.noop"]
    cpu, wall = time.process_time(), time.perf_counter()
    results = [task.apply_async() for _ in range(total)]
    for result in results:
        result.get(timeout=120)
    return time.perf_counter() - wall, time.process_time() - cpu


def med(values: list[float]) -> float:
    return statistics.median(values)


class Lines(list[str]):
    """Figures, printed as they come (a long run shows progress; a failure keeps what was measured)."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)


# Raw Celery runs in a thread: its calls block, and the coordinator's loop must keep serving its reply
# reader meanwhile (an idle reader costs nothing measurable next to the raw tasks' CPU).


def load() -> str:
    """The 1-minute load average: the machine is shared, so every figure says what it was measured under."""
    return f"load {os.getloadavg()[0]:.1f}"


async def measure(args: argparse.Namespace, kernel: Castor, app: Any) -> list[str]:
    lines = Lines()
    if "latency" in args.only:
        ours, theirs = [], []
        for _ in range(args.repeat):  # interleaved: a change of load hits both sides alike
            ours.append(await castor_latency(kernel, args.latency_calls))
            theirs.append(await asyncio.to_thread(raw_latency, app, args.latency_calls))
        lines.append(f"latency p50 of one call | {med(ours) * 1e3:.2f} ms | {med(theirs) * 1e3:.2f} ms | "
                     f"{med(ours) / med(theirs):.2f} of raw | {load()}")
    if "throughput" in args.only:
        total = args.agents * args.calls
        ours_rate, raw_rate = [], []
        for _ in range(args.repeat):
            ours_rate.append(total / (await castor_batch(kernel, args.agents, args.calls))[0])
            raw_rate.append(total / (await asyncio.to_thread(raw_batch, app, total))[0])
        lines.append(f"throughput, {args.agents} agents x {args.calls} calls | {med(ours_rate):,.0f} calls/s | "
                     f"{med(raw_rate):,.0f} tasks/s | {med(ours_rate) / med(raw_rate):.2f}x raw | {load()}")
    if "cpu" in args.only:
        # Each point's sample is taken right after a raw sample of its own: on a shared (or throttled)
        # machine the speed of a core drifts by tens of percent over minutes, and a ratio is only fair
        # between figures taken under the same drift. The ratio is the median of the pairs' ratios.
        ours_cpu: dict[int, list[float]] = {agents: [] for agents in args.curve}
        raw_cpu: dict[int, list[float]] = {agents: [] for agents in args.curve}
        for _ in range(args.repeat):
            for agents in args.curve:
                raw_cpu[agents].append((await asyncio.to_thread(raw_batch, app, args.cpu_raw_tasks))[1]
                                       / args.cpu_raw_tasks)
                ours_cpu[agents].append(await castor_cpu(kernel, agents))
        for agents in args.curve:
            ratio = med([o / r for o, r in zip(ours_cpu[agents], raw_cpu[agents], strict=True)])
            lines.append(f"coordinator CPU per syscall, {agents} agents | {med(ours_cpu[agents]) * 1e3:.3f} ms | "
                         f"{med(raw_cpu[agents]) * 1e3:.2f} ms per raw task | {ratio:.2f} of raw | {load()}")
        ratios = [med([o / r for o, r in zip(ours_cpu[a], raw_cpu[a], strict=True)]) for a in args.curve]
        lines.append(f"coordinator CPU curve, {args.curve[0]} to {args.curve[-1]} agents | "
                     f"{min(ratios):.2f}-{max(ratios):.2f} of raw | | spread {max(ratios) / min(ratios) - 1:+.0%} | "
                     f"{load()}")
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--latency-calls", type=int, default=200)
    parser.add_argument("--cpu-raw-tasks", type=int, default=2000)
    parser.add_argument("--curve", type=lambda s: [int(x) for x in s.split(",")], default=[10, 100, 500, 2000])
    parser.add_argument("--only", type=lambda s: s.split(","), default=["latency", "throughput", "cpu"],
                        help="figures to measure: latency,throughput,cpu")
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:10]
    prefix, raw_prefix = f"castorbench-{tag}", f"castorbenchraw-{tag}"
    tmp = Path(tempfile.mkdtemp(prefix="castor-bench-"))
    config = tmp / "castor.toml"
    tools = ROOT / "bench" / "_celery_fixtures.py"
    config.write_text(CONFIG.format(redis=REDIS, prefix=prefix, tools=tools, secret=secrets.token_hex(32)))
    # The coordinator reads only the config (env={} below): so must the worker, or a CASTOR_SECRET in the
    # environment would take precedence there and every task would fail its token check.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASTOR_")}
    env.update(PYTHONPATH=str(ROOT), BENCH_REDIS=REDIS, BENCH_RAW_PREFIX=raw_prefix)
    ours_cmd = [sys.executable, "-m", "castor.fleet.workers", "worker", "--config", str(config), "--pool", "bench",
                "--pool-impl", "threads", "--concurrency", "8", "--fast-start"]
    workers = [start(ours_cmd, env, tmp / "castor-worker.log")]
    os.environ["BENCH_RAW_PREFIX"] = raw_prefix
    os.environ["BENCH_REDIS"] = REDIS
    workers.append(start(celery_cmd("bench._celery_fixtures", f"{raw_prefix}.q", 8), env, tmp / "raw-worker.log"))
    app = raw_app()
    # The default pool (50 connections): single commands of concurrent runs share pipelines.
    settings = load_settings(config, env={})
    kernel = Castor(**fleet_options(settings, budgets={}))
    version = sys.version.split()[0]
    print(f"Celery execution, Redis broker, thread pool of 8, medians of {args.repeat} runs (python {version})")
    print(f"figure | Castor (kernel + Celery pool) | raw Celery | ratio | machine ({os.cpu_count()} cores)", flush=True)
    try:
        await measure(args, kernel, app)
    finally:
        await kernel.close()
        app.close()
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.wait(10)
        client = redis.Redis.from_url(REDIS)
        for pattern in (f"{prefix}*", f"{raw_prefix}*", f"celery-task-meta-*{tag}*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
        client.close()


if __name__ == "__main__":
    asyncio.run(main())
