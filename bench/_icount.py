"""Instructions per step of the embedded kernel's hot paths, counted by valgrind's callgrind.

    python bench/_icount.py                          # this checkout
    python bench/_icount.py --tree /path/to/other    # this checkout beside another one (a baseline)
    python bench/kernel.py --icount [--tree ...]     # the same, from the kernel benchmark

Wall-clock and CPU-time figures move with a shared machine's load; the number of instructions a loop
executes does not. Each checkout runs ``bench/_icount.py --child`` under ``valgrind --tool=callgrind``
with that checkout on ``PYTHONPATH``. The child runs the workload of ``bench/_workload.py`` (a no-op
async tool) and marks the bounds of each measured segment by calling ``os.getppid()``: callgrind is
told to dump (and zero) its counters on entering the C function behind it (``--dump-before=os_getppid``),
so each dump holds exactly one segment. Every path is measured at two sizes; instructions per step are
the difference of the two segments divided by the difference of their steps, so whatever a segment
costs once (a run's start and end, the markers) cancels out. ``PYTHONHASHSEED`` is fixed, so two
invocations count within a few hundredths of a percent of each other.

Paths (as ``bench/README.md`` describes for ``bench/kernel.py``):

- ``plain``: the agent's loop of ``await tool("noop", i=i)``, memory store, no budget;
- ``charged``: the same with ``budgets={"api": 1e9}`` (every call charged 1 ``api``);
- ``replay``: ``kernel.run(agent, checkpoint=cp)`` of a completed charged run, the whole call;
- ``sqlite``: the charged loop on ``store="sqlite:///<tmp>/icount.db"`` (each step committed);
- ``model``: a framework guard's step, memory store, no budget: ``model_call(canonical=True)`` of a scripted
  model that answers at once, then the no-op tool (two syscalls; ``bench/model_syscalls.py`` times them).

Needs valgrind (``apt-get install valgrind``) and a Python whose ``os_getppid`` symbol valgrind can see
(CPython built with symbols, as pyenv's and Debian's are). Takes about a minute per checkout on a
quiet machine (most of it the imports, under valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PATHS = ("plain", "charged", "replay", "sqlite", "model")
CHARGED = {"api": 1e9}
SUMMARY = re.compile(rb"^(?:summary|totals): (\d+)", re.MULTILINE)


# --- the child: runs under callgrind ----------------------------------------------------------------


class Marks:
    """Names the interval that ends at each ``os.getppid()`` call (one callgrind dump each)."""

    def __init__(self) -> None:
        self.labels: list[str] = []

    def __call__(self, label: str) -> None:
        self.labels.append(label)
        os.getppid()  # callgrind dumps and zeroes its counters on entering os_getppid


class Child:
    """The measured workload: kernels of this checkout's ``castor``, the no-op tool, marked segments."""

    def __init__(self, directory: str) -> None:
        from castor import Castor
        from castor.lib import model_call, tool

        self.castor, self.tool, self.model_call, self.directory = Castor, tool, model_call, directory
        self.marks = Marks()
        self.label = ""  # the live segment being measured ("": none)

    def agent(self, calls: int) -> Any:
        """An agent calling the no-op ``calls`` times; a live segment counts its loop only, as
        ``bench/kernel.py`` times it."""
        tool, marks = self.tool, self.marks

        async def icount_agent() -> str:
            label = self.label
            if label:
                marks("gap")
            for i in range(calls):
                await tool("noop", i=i)
            if label:
                marks(label)
            return "done"

        return icount_agent

    def model_agent(self, steps: int) -> Any:
        """A guard's steps: a model call (the request built once, as a guard shares its converted parts) and
        the tool call it asks for."""
        tool, model_call, marks = self.tool, self.model_call, self.marks
        request = {"messages": [{"role": "user", "content": "count"}]}

        async def scripted(_request: dict[str, Any]) -> dict[str, Any]:
            call = {"id": "c", "name": "noop", "arguments": {"i": 1}}
            return {"text": "", "tool_calls": [call], "usage": {"input_tokens": 10, "output_tokens": 5}}

        async def icount_model_agent() -> str:
            label = self.label
            if label:
                marks("gap")
            for i in range(steps):
                await model_call(request, model="scripted", invoke=scripted, canonical=True)
                await tool("noop", i=i)
            if label:
                marks(label)
            return "done"

        return icount_model_agent

    def kernel(self, store: str = "") -> Any:
        async def noop(i: int) -> int:
            return i

        return self.castor(tools=[noop], **({"store": store} if store else {}))

    async def live(self, calls: int, budgets: dict[str, float] | None, store: str, label: str) -> None:
        kernel = self.kernel(store)
        gc.collect()
        self.label = label
        cp = await kernel.run(self.agent(calls), budgets=budgets)
        self.label = ""
        check(cp, calls)
        await kernel.close()

    async def model(self, steps: int, label: str) -> None:
        kernel = self.kernel()
        gc.collect()
        self.label = label
        cp = await kernel.run(self.model_agent(steps))
        self.label = ""
        check(cp, 2 * steps)
        await kernel.close()

    async def replay(self, calls: int, label: str) -> None:
        kernel = self.kernel()
        run = self.agent(calls)
        cp = await kernel.run(run, budgets=CHARGED)
        check(cp, calls)
        gc.collect()
        if label:
            self.marks("gap")
        cp = await kernel.run(run, checkpoint=cp)  # the whole call, as bench/kernel.py times it
        if label:
            self.marks(label)
        check(cp, calls)
        await kernel.close()

    async def all_paths(self, calls: int, labelled: bool) -> None:
        """Each path once at ``calls`` steps (a segment each if ``labelled``)."""
        def label(path: str) -> str:
            return f"{path}:{calls}" if labelled else ""

        sqlite = f"sqlite:///{os.path.join(self.directory, f'icount-{calls}-{labelled}.db')}"
        await self.live(calls, None, "", label("plain"))
        await self.live(calls, CHARGED, "", label("charged"))
        await self.replay(calls, label("replay"))
        await self.live(calls, CHARGED, sqlite, label("sqlite"))
        await self.model(calls, label("model"))


async def child(low: int, high: int, directory: str) -> list[str]:
    """Warm every path up (imports, schemas, the interpreter's specialisation), then run each at
    ``low`` and ``high`` steps between marks."""
    work = Child(directory)
    await work.all_paths(200, False)
    await work.all_paths(201, False)
    await work.all_paths(low, True)
    await work.all_paths(high, True)
    return work.marks.labels


def check(cp: Any, calls: int) -> None:
    if cp.status != "COMPLETED" or len(cp.syscall_log) != calls:
        raise SystemExit(f"icount run did not complete: {cp.status}, {len(cp.syscall_log)} steps")


# --- the parent: runs the child under callgrind, one checkout at a time -------------------------------


def count(tree: Path, low: int, high: int, keep: str = "") -> dict[str, Any]:
    """Instructions per step of each path in checkout ``tree``; the dumps are kept in ``keep`` if given
    (``callgrind_annotate <keep>/callgrind.out.<n>``: the n-th mark's segment, C functions by cost)."""
    with tempfile.TemporaryDirectory(prefix="castor-icount-") as directory:
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
        out = os.path.join(os.path.abspath(keep or directory), "callgrind.out")
        env = dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0")
        cmd = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-before=os_getppid",
            "--dump-instr=no", sys.executable, str(Path(__file__).resolve()),
            "--child", "--low", str(low), "--high", str(high), "--dir", directory,
        ]
        done = subprocess.run(cmd, capture_output=True, env=env, cwd=directory, check=False)
        if done.returncode != 0:
            raise SystemExit(f"callgrind run failed in {tree}:\n{done.stderr.decode(errors='replace')[-3000:]}")
        result = json.loads(done.stdout.decode().strip().splitlines()[-1])
        dumps = sorted(glob.glob(out + ".*"), key=lambda name: int(name.rsplit(".", 1)[1]))
        if keep:  # which dump holds which segment ("gap": between two segments)
            lines = [f"{n} {label}\n" for n, label in enumerate(result["labels"], 1)]
            Path(keep, "labels.txt").write_text("".join(lines))
        if len(dumps) != len(result["labels"]):
            raise SystemExit(f"expected {len(result['labels'])} callgrind dumps, found {len(dumps)}")
        segments: dict[str, int] = {}
        for label, name in zip(result["labels"], dumps, strict=True):
            found = SUMMARY.search(Path(name).read_bytes())
            if found is None:
                raise SystemExit(f"no instruction total in {name}")
            if label != "gap":
                segments[label] = int(found.group(1))
    per_step = {path: (segments[f"{path}:{high}"] - segments[f"{path}:{low}"]) / (high - low) for path in PATHS}
    return {"tree": str(tree), "castor_file": result["castor_file"], "per_step": per_step, "segments": segments}


def describe(tree: Path) -> str:
    """The checkout's commit (with ``+`` when its tree has changes), for the table's heading."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, check=False).stdout
    commit = git("rev-parse", "--short", "HEAD").strip() or tree.name
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "castor").strip()
    return commit + ("+" if dirty else "")


def table(results: list[dict[str, Any]]) -> str:
    """A markdown table: one row per path, one column per checkout, the last beside the first."""
    heads = [describe(Path(r["tree"])) for r in results]
    last = " | last vs first |" if len(results) > 1 else " |"
    lines = ["| path | " + " | ".join(f"`{h}` instr/step" for h in heads) + last]
    lines.append("|---|" + "---:|" * (len(results) + (len(results) > 1)))
    for path in PATHS:
        values = [r["per_step"][path] for r in results]
        cells = [f"{v:,.0f}" for v in values]
        if len(results) > 1:
            cells.append(f"{(values[-1] / values[0] - 1) * 100:+.1f} %")
        lines.append(f"| {path} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", default=[], help="another checkout to count first (repeatable)")
    parser.add_argument("--low", type=int, default=2_000, help="steps of the smaller segment (default 2,000)")
    parser.add_argument("--high", type=int, default=10_000, help="steps of the larger segment (default 10,000)")
    parser.add_argument("--no-self", action="store_true", help="count only the --tree checkouts")
    parser.add_argument("--keep", default="", help="keep callgrind's dumps in this directory (one checkout)")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import castor

        labels = asyncio.run(child(args.low, args.high, args.dir))
        print(json.dumps({"labels": labels, "castor_file": castor.__file__}))
        return
    if args.high <= args.low:
        parser.error("--high must be larger than --low")
    trees = [Path(t).resolve() for t in args.tree] + ([] if args.no_self else [ROOT])
    if args.keep and len(trees) > 1:
        parser.error("--keep takes one checkout: add --no-self and one --tree, or no --tree")
    results = []
    for tree in trees:
        print(f"counting {tree} under callgrind ...", file=sys.stderr, flush=True)
        result = count(tree, args.low, args.high, args.keep)
        if not result["castor_file"].startswith(str(tree)):
            raise SystemExit(f"{tree}: the child imported castor from {result['castor_file']}")
        results.append(result)
    print(table(results))
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
