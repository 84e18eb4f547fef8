"""What ``replicas=1`` costs: runs that wait for a replica at every claim and record, beside the same runs not waiting.

    python bench/replicas.py [--steps 200] [--runs 5] [--concurrent 100]

Starts a ``redis-server`` and a replica of it on free ports (``redis-server`` must be installed), then, on
that primary, medians of ``--runs``:
1. one run of ``--steps`` plain calls under ``at_most_once`` (a claim and a record a call), alone:
   microseconds per call with ``replicas=0`` and with ``replicas=1``;
2. ``--concurrent`` such runs at once in one process (20 calls each): calls per second both ways, where
   one probe answers every claim and record that came while the last one was out (group commit);
3. a fleet worker's part of ``--steps`` steps (``StepScripts``: a claim, then a finish that journals the
   record and answers on a reply stream), one after another: microseconds per step both ways (with
   ``replicas=1`` the start and the record are each waited for before the tool runs and the answer goes).
Both ways run against the same two servers in the same run, alternating, so the ratio is a fair one.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from castor import Castor
from castor.lib import tool


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(directory: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise SystemExit(f"redis-server on port {port} did not start") from None
            time.sleep(0.05)
    client.close()
    return proc


async def add(a: int, b: int) -> int:
    return a + b


def agent(steps: int):  # type: ignore[no-untyped-def]
    async def run() -> int:
        total = 0
        for i in range(steps):
            total = await tool("add", a=total, b=i)
        return total

    return run


async def alone(url: str, steps: int, tag: str) -> float:
    """Microseconds per call of one run of ``steps`` calls."""
    kernel = Castor(tools=[add], store=url)
    try:
        await kernel.run(agent(2), pid=f"warm-{tag}")
        started = time.perf_counter()
        await kernel.run(agent(steps), pid=f"alone-{tag}")
        return (time.perf_counter() - started) / steps * 1e6
    finally:
        await kernel.close()


async def together(url: str, runs: int, tag: str) -> float:
    """Calls per second of ``runs`` runs of 20 calls at once."""
    kernel = Castor(tools=[add], store=url)
    try:
        await kernel.run(agent(2), pid=f"warm-many-{tag}")
        started = time.perf_counter()
        await asyncio.gather(*(kernel.run(agent(20), pid=f"many-{tag}-{i}") for i in range(runs)))
        return runs * 20 / (time.perf_counter() - started)
    finally:
        await kernel.close()


def worker_steps(url: str, prefix: str, replicas: int, steps: int) -> float:
    """Microseconds per step of a worker's claim and finish, ``steps`` steps of one run."""
    from castor.fleet.workers._scripts import StepScripts

    from castor.checkpoint import new_record
    from castor.fleet.wire import OK, Job, Reply

    scripts = StepScripts(url, prefix, replicas=replicas, replica_timeout=1.0)
    try:
        started = time.perf_counter()
        for step in range(steps):
            job = Job("bench", step, "add", {"a": step}, reply_to=f"{prefix}:replies")
            if scripts.claim(job) != -1 or (replicas and scripts.short_of_replicas()):
                raise SystemExit(f"step {step} was not started as a worker starts it")
            scripts.finish(job, new_record({"tool_name": "add", "arguments": {"a": step}}, step),
                           Reply(job.effect_id, 0, OK, step))
        return (time.perf_counter() - started) / steps * 1e6
    finally:
        scripts.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=100)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("bench/replicas.py needs redis-server installed")
    with tempfile.TemporaryDirectory() as tmp:
        first, second = free_port(), free_port()
        (Path(tmp) / "p").mkdir()
        (Path(tmp) / "r").mkdir()
        primary = start(Path(tmp) / "p", first, "--repl-diskless-sync-delay", "0")
        replica = start(Path(tmp) / "r", second, "--replicaof", "127.0.0.1", str(first))
        try:
            client = redis.Redis(port=first, decode_responses=True)
            while int(client.info("replication").get("connected_slaves", 0)) < 1:
                time.sleep(0.05)
            base = f"redis://127.0.0.1:{first}/0?at_most_once=1"
            ways = {"replicas=0": f"{base}&prefix=b0", "replicas=1": f"{base}&prefix=b1&replicas=1"}
            per_call: dict[str, list[float]] = {way: [] for way in ways}
            rates: dict[str, list[float]] = {way: [] for way in ways}
            per_step: dict[str, list[float]] = {way: [] for way in ways}
            for i in range(args.runs):
                for n, (way, url) in enumerate(ways.items()):
                    per_call[way].append(asyncio.run(alone(url, args.steps, f"{i}")))
                    rates[way].append(asyncio.run(together(url, args.concurrent, f"{i}")))
                    per_step[way].append(worker_steps(f"redis://127.0.0.1:{first}/0", f"w{n}-{i}", n, args.steps))
            print(f"one run of {args.steps} calls (at_most_once: a claim and a record a call), medians of {args.runs}:")
            for way in ways:
                print(f"  {way}: {statistics.median(per_call[way]):8.0f} µs a call")
            ratio = statistics.median(per_call["replicas=1"]) / statistics.median(per_call["replicas=0"])
            print(f"  ratio: {ratio:.2f}x")
            print(f"{args.concurrent} runs of 20 calls at once, one process:")
            for way in ways:
                print(f"  {way}: {statistics.median(rates[way]):8.0f} calls/s")
            share = statistics.median(rates["replicas=1"]) / statistics.median(rates["replicas=0"])
            print(f"  replicas=1 keeps {share:.0%} of the rate")
            print(f"a fleet worker's claim and finish of {args.steps} steps, one after another, "
                  f"medians of {args.runs}:")
            for way in ways:
                print(f"  {way}: {statistics.median(per_step[way]):8.0f} µs a step")
            ratio = statistics.median(per_step["replicas=1"]) / statistics.median(per_step["replicas=0"])
            print(f"  ratio: {ratio:.2f}x")
            client.close()
        finally:
            for proc in (primary, replica):
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
