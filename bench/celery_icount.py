"""A Celery coordinator's instructions per syscall, counted by valgrind's callgrind.

    python bench/celery_icount.py                         # this checkout
    python bench/celery_icount.py --tree /path/to/other   # this checkout, then another one (a baseline)

``bench/celery_exec.py`` measures the coordinator's CPU time per syscall against raw Celery's, which
moves with the load of a shared machine by tens of percent; the instructions a coordinator executes
per syscall move by a few. Each checkout runs this script's ``--child`` under ``valgrind
--tool=callgrind`` (the worker it starts is not traced): a coordinator of that checkout with 50
concurrent agents calling the no-op tool through one Castor worker process (a pool of 8 threads), on
the local Redis under a private prefix deleted afterwards. After two warm-up rounds, it marks two
segments of 200 and 700 syscalls by calling ``os.getppid()`` (callgrind dumps its counters on entering
it: ``--dump-before=os_getppid``); instructions per syscall are their difference over 500, so what a
segment costs once cancels out. How many replies one read of the stream brings still depends a little
on timing: repeat runs of one checkout agree within about 3%.

A checkout older than the renovation (issue 11) has its worker at ``python -m workers``; the script
finds whichever the checkout has. Needs valgrind; takes two to three minutes per checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import glob
import os
import re
import secrets
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUMMARY = re.compile(rb"^(?:summary|totals): (\d+)", re.MULTILINE)
LOW, HIGH, AGENTS = 4, 14, 50  # calls per agent in the two measured segments


def worker_module(root: Path) -> str:
    """The module that starts a Castor worker in the checkout at ``root``."""
    return "castor.fleet.workers" if (root / "castor" / "fleet").is_dir() else "workers"


async def child(root: Path) -> None:
    """The measured coordinator (runs under callgrind, with ``root`` first on ``sys.path``)."""
    import redis

    from bench import celery_exec as bench
    from bench._celery_fixtures import start
    from castor import Castor
    from castor.executors.celery import fleet_options
    from castor.settings import load_settings

    prefix = f"castoricount-{uuid.uuid4().hex[:10]}"
    tmp = Path(tempfile.mkdtemp(prefix="castor-icount-"))
    config = tmp / "castor.toml"
    tools = root / "bench" / "_celery_fixtures.py"
    config.write_text(bench.CONFIG.format(redis=bench.REDIS, prefix=prefix, tools=tools, secret=secrets.token_hex(32)))
    # The worker runs natively (valgrind's variables stay out) and reads only the config's secret.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASTOR", "VALGRIND", "LD_PRELOAD"))}
    env["PYTHONPATH"] = str(root)
    cmd = [sys.executable, "-m", worker_module(root), "worker", "--config", str(config), "--pool", "bench",
           "--pool-impl", "threads", "--concurrency", "8", "--fast-start"]
    worker = start(cmd, env, tmp / "worker.log")
    kernel = Castor(**fleet_options(load_settings(config, env={}), budgets={}))
    try:
        for _ in range(2):
            await bench.castor_batch(kernel, AGENTS, 10)
        gc.collect()
        gc.freeze()  # a full collection of the warm-up's objects must not land in one segment
        os.getppid()
        await bench.castor_batch(kernel, AGENTS, LOW)
        os.getppid()
        await bench.castor_batch(kernel, AGENTS, HIGH)
        os.getppid()
    finally:
        await kernel.close()
        worker.terminate()
        worker.wait(10)
        client = redis.Redis.from_url(bench.REDIS)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
        client.close()


def count(root: Path) -> float:
    """Instructions per syscall of the checkout at ``root``."""
    out = Path(tempfile.mkdtemp(prefix="castor-callgrind-"))
    cmd = ["valgrind", "--tool=callgrind", "--dump-before=os_getppid", f"--callgrind-out-file={out}/cg.%p",
           sys.executable, str(Path(__file__).resolve()), "--child", str(root)]
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(root)}
    done = subprocess.run(cmd, cwd=out, env=env, capture_output=True, check=False)
    dumps = sorted(glob.glob(f"{out}/cg.*.*"), key=lambda name: int(name.rsplit(".", 1)[1]))
    if done.returncode != 0 or len(dumps) < 3:
        sys.exit(f"callgrind run failed ({done.returncode}):\n{done.stderr.decode()[-2000:]}")
    low, high = (int(SUMMARY.search(Path(name).read_bytes()).group(1)) for name in dumps[1:3])  # type: ignore[union-attr]
    return (high - low) / (AGENTS * (HIGH - LOW))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, help="another checkout to count beside this one")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(args.child))
        os.chdir(args.child)
        asyncio.run(child(args.child))
        return
    roots = [HERE.parent, *([args.tree.resolve()] if args.tree else [])]
    print("checkout | coordinator instructions per syscall (50 agents, thread pool of 8)", flush=True)
    figures = []
    for root in roots:
        figures.append(count(root))
        print(f"{root} | {figures[-1] / 1e3:,.0f} k", flush=True)
    if len(figures) == 2:
        print(f"this checkout / the other | {figures[0] / figures[1]:.3f}")


if __name__ == "__main__":
    main()
