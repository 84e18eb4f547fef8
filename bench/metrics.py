"""What metrics and traces cost the embedded kernel's hot path: ``bench/kernel.py``'s workload (a no-op
tool charged to a budget; a completed run replayed) with no observability, with the metrics interceptor,
and with the span interceptor (spans made, none exported), alternating in one process.

    python bench/metrics.py [--calls 5000] [--repeat 5]

A kernel without the interceptors is the kernel of a process started without ``--metrics-port`` or
``--trace``: no stage is added (``tests/metrics``), so "off" is the cost of not enabling them. Prints
CPU µs per charged syscall and per replayed step (medians: the process's CPU time, which a machine busy
with other work inflates least; ``bench/kernel.py`` reports both); takes about half a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from castor import Castor
from castor.lib import tool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _workload import noop, noop_paid

BUDGET = {"api": 1e9}


def interceptors(kind: str) -> list[Any]:
    """The interceptors of variant ``kind``."""
    if kind == "off":
        return []
    if kind == "metrics":
        from castor.metrics._instruments import Instruments
        from castor.metrics._kernel import KernelMetrics

        return [KernelMetrics(Instruments())]
    from opentelemetry.sdk.trace import TracerProvider

    from castor.tracing.kernel import SyscallSpans

    return [SyscallSpans(TracerProvider().get_tracer("bench"))]


async def one(kind: str, calls: int) -> tuple[float, float]:
    """CPU µs per charged syscall and per replayed step of one fresh kernel."""
    elapsed = 0.0

    async def agent() -> str:
        nonlocal elapsed
        start = time.process_time()
        for i in range(calls):
            await tool("noop_paid", i=i)
        elapsed = time.process_time() - start
        return "done"

    kernel = Castor(tools=[noop, noop_paid], interceptors=interceptors(kind))
    cp = await kernel.run(agent, budgets=BUDGET)
    live = elapsed / calls * 1e6
    gc.collect()
    start = time.process_time()
    replayed = await kernel.run(agent, checkpoint=cp)
    replay = (time.process_time() - start) / calls * 1e6
    assert cp.result == replayed.result == "done"
    return live, replay


async def main(calls: int, repeat: int) -> None:
    kinds = ("off", "metrics", "traces")
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    await one("metrics", 200)  # warm imports and caches
    await one("traces", 200)
    for _ in range(repeat):
        for kind in kinds:
            samples[kind].append(await one(kind, calls))
            gc.collect()
    print(f"{calls} calls x {repeat} repetitions, CPU µs (medians)")
    print(f"{'':10}{'charged syscall':>18}{'replayed step':>16}")
    base = [statistics.median(x[i] for x in samples["off"]) for i in (0, 1)]
    for kind in kinds:
        live, replay = (statistics.median(x[i] for x in samples[kind]) for i in (0, 1))
        extra = "" if kind == "off" else (
            f"   ({live - base[0]:+.2f} / {replay - base[1]:+.2f} µs, "
            f"{live / base[0] - 1:+.0%} / {replay / base[1] - 1:+.0%})"
        )
        print(f"{kind:10}{live:15.2f} µs{replay:13.2f} µs{extra}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.repeat))
