"""Speed of a model syscall beside calling the provider object directly (issue 13's goal: at most 30 µs more).

    python bench/llm.py                # measure, print the table, update docs/benchmarks.md ("Model calls")
    python bench/llm.py --no-write     # measure and print only

The provider is ``castor.llm.Scripted`` (no network, no sleep: what is left is Castor's own cost). Each
repetition runs in a fresh process and times, per call, after a warm-up:

- direct: ``await model.complete(request)``, the request built as ``complete`` builds it;
- model syscall: ``await castor.lib.complete(prompt=...)`` in an agent run by ``Castor(llm=model)`` on the
  memory store, no budget (the journal record, the usage settled in the record);
- with a token budget: the same with ``budgets={"tokens": 1e12}``: a reservation before each call and a
  settle after it, in the store;
- replayed: the same agent resumed from its finished checkpoint's fork at the last step (served from the
  journal, the model not called).

Figures are medians over the repetitions (``--repeat``), in µs of CPU per call (``time.process_time``: a
busy shared machine inflates them less than wall-clock time). A charged tool syscall is measured in the
same processes, for scale.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
HEADING = "## Model calls"
TARGET_US = 30.0
WARM = 500


def _scripted(calls: int) -> Any:
    from castor.llm import Scripted

    return Scripted([f"answer {i}" for i in range(calls + WARM)])


async def _direct(calls: int) -> float:
    from castor.lib.models import build_request

    model = _scripted(calls)
    for i in range(WARM):
        await model.complete(build_request(prompt=f"warm {i}"))
    start = time.process_time()
    for i in range(calls):
        await model.complete(build_request(prompt=f"question {i}"))
    return (time.process_time() - start) / calls * 1e6


def _timed(calls: int, step: Any, timing: list[float]) -> Any:
    """An agent that warms up, then times ``calls`` awaits of ``step(i)``."""

    async def agent() -> None:
        for i in range(WARM):
            await step(i)
        start = time.process_time()
        for i in range(calls):
            await step(i)
        timing.append((time.process_time() - start) / calls * 1e6)

    return agent


async def _through(calls: int, budgets: dict[str, float] | None) -> tuple[float, float]:
    from castor import Castor
    from castor.lib import complete

    async def ask(i: int) -> Any:
        return await complete(prompt=f"question {i}")

    kernel = Castor(llm=_scripted(calls), budgets=budgets)
    live: list[float] = []
    cp = await kernel.run(_timed(calls, ask, live))
    replayed: list[float] = []
    await kernel.run(_timed(calls, ask, replayed), checkpoint=cp.fork(at_step=len(cp.syscall_log)))
    return live[0], replayed[0]


async def _tool(calls: int) -> float:
    from castor import Castor
    from castor.lib import tool

    async def noop(i: int) -> int:
        return i

    async def call(i: int) -> Any:
        return await tool("noop", i=i)

    timing: list[float] = []
    await Castor(tools=[noop], budgets={"api": 1e12}).run(_timed(calls, call, timing))
    return timing[0]


def workload(calls: int) -> dict[str, float]:
    """One repetition, in this process: µs of CPU per call of each figure."""

    async def main() -> dict[str, float]:
        plain, replay = await _through(calls, None)
        charged, _ = await _through(calls, {"tokens": 1e12})
        return {
            "direct": await _direct(calls), "syscall": plain, "charged": charged, "replayed": replay,
            "tool": await _tool(calls),
        }

    return asyncio.run(main())


def measure(calls: int, repeat: int) -> dict[str, list[float]]:
    """``repeat`` repetitions, each in a fresh process of this checkout."""
    samples: dict[str, list[float]] = {}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(repeat):
        done = subprocess.run(
            [sys.executable, __file__, "--child", "--calls", str(calls)], capture_output=True, text=True, env=env,
            check=True,
        )
        for key, value in json.loads(done.stdout.strip().splitlines()[-1]).items():
            samples.setdefault(key, []).append(value)
    return samples


def table(samples: dict[str, list[float]], calls: int, repeat: int) -> list[str]:
    """The section's lines: one row per figure, and the overhead against the target."""
    med = {k: statistics.median(v) for k, v in samples.items()}
    over = [s - d for s, d in zip(samples["charged"], samples["direct"], strict=True)]
    overhead = statistics.median(over)
    rows = [
        ("provider called directly", med["direct"], ""),
        ("model syscall, no budget", med["syscall"], ""),
        ("model syscall, token budget (reserve + settle)", med["charged"], ""),
        ("model syscall − direct call (charged)", overhead, f"target ≤ {TARGET_US:g} µs: "
         + ("ok" if overhead <= TARGET_US else "MISS")),
        ("replayed model step", med["replayed"], "served from the journal"),
        ("tool syscall, budget charged (for scale)", med["tool"], "a no-op tool, same processes"),
    ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        HEADING,
        "",
        f"`python bench/llm.py` ({calls:,} calls × {repeat} fresh processes, medians; provider `castor.llm.Scripted`;"
        f" {time.strftime('%Y-%m-%d')}, load average {load:.1f} on {os.cpu_count()} cores). µs of CPU per call.",
        "",
        "| figure | µs | note |",
        "|---|---:|---|",
    ]
    lines += [f"| {label} | {value:.2f} | {note} |" for label, value, note in rows]
    ratio = med["charged"] / med["tool"] if med["tool"] else float("nan")
    lines += [
        "",
        f"A charged model syscall costs {ratio:.1f}× a charged tool syscall of the same processes: it also copies and",
        "checks the request, estimates the prompt, reserves, settles and builds the typed response. Model calls have",
        "a chain of their own (`castor/kernel/model.py`), so the tool syscall path is unchanged: compare the tool row",
        "with the Embedded kernel section. On a busy machine every figure is inflated: read them beside the tool row.",
    ]
    return lines


def write(lines: list[str]) -> None:
    """Replace (or add) the section in docs/benchmarks.md."""
    text = DOC.read_text()
    section = "\n".join(lines) + "\n"
    if HEADING in text:
        start = text.index(HEADING)
        end = text.find("\n## ", start + len(HEADING))
        text = text[:start] + section + (text[end:] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5_000, help="model calls per figure (default 5,000)")
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes; figures are medians (default 5)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(workload(args.calls)))
        return
    lines = table(measure(args.calls, args.repeat), args.calls, args.repeat)
    print("\n".join(lines))
    if not args.no_write:
        write(lines)


if __name__ == "__main__":
    main()
