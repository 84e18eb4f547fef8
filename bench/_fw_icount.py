"""Instructions per step of a guarded framework agent, counted by valgrind's callgrind.

    python bench/frameworks.py --icount                      # every installed framework, this checkout
    python bench/frameworks.py --icount --only langgraph --tree /path/to/baseline

CPU time moves with a shared machine's load; the number of instructions a run executes does not, so
these counts are the before/after comparison of a change to a guard. Each checkout runs this file with
``--child`` under ``valgrind --tool=callgrind`` (that checkout's ``castor`` on ``PYTHONPATH``; the cases
are this checkout's ``bench/frameworks.py``). The child warms each mode up twice (imports, schemas,
LangGraph's compiled graph, the interpreter's specialisation), then runs it ``--runs`` times between
two ``os.getppid()`` calls, on which callgrind dumps and zeroes its counters (as ``bench/_icount.py``).
A mode's figure is its segment's instructions divided by the runs and the steps: a whole run, start and
end included, as ``bench/frameworks.py`` times it. Modes: ``alone`` (the framework without Castor),
``embedded`` (guarded, memory store), ``layers`` (guarded, model step and tool call short-circuited) and
``replayed`` (a fork at the last step: every step from the journal).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import glob
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = ("alone", "embedded", "layers", "replayed")


async def _child(name: str, steps: int, runs: int) -> list[str]:
    sys.path.insert(0, str(HERE))
    import frameworks

    from castor import Castor

    alone, guarded, tools = frameworks.CASES[name](steps)
    kernel = Castor(tools=tools)
    labels: list[str] = []

    def mark(label: str) -> None:
        labels.append(label)
        os.getppid()  # callgrind dumps and zeroes its counters on entering os_getppid

    async def embedded() -> None:
        await kernel.run(guarded)

    async def layers() -> None:
        await frameworks._layers_only(name, embedded)

    forks_made = []
    for _ in range(runs + 2):  # a fork's run id is its parent's and its step's: one parent run each
        cp = await kernel.run(guarded)
        assert cp.status == "COMPLETED" and len(cp.syscall_log) == 2 * steps + 1, cp.status
        forks_made.append(cp.fork(at_step=len(cp.syscall_log)))
    forks = iter(forks_made)

    async def replayed() -> None:
        done = await kernel.run(guarded, checkpoint=next(forks))
        assert done.status == "COMPLETED"

    for label, run in (("alone", alone), ("embedded", embedded), ("layers", layers), ("replayed", replayed)):
        for _ in range(2):
            await run()
        gc.collect()
        mark("gap")
        for _ in range(runs):
            await run()
        mark(label)
    return labels


def count(tree: Path, name: str, steps: int, runs: int) -> dict[str, float]:
    """Instructions per step of each mode for framework ``name`` in checkout ``tree``."""
    with tempfile.TemporaryDirectory(prefix="castor-fw-icount-") as directory:
        out = os.path.join(directory, "callgrind.out")
        env = dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0")
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-before=os_getppid",
               "--dump-instr=no", sys.executable, str(Path(__file__).resolve()), "--child", name,
               "--steps", str(steps), "--runs", str(runs)]
        done = subprocess.run(cmd, capture_output=True, env=env, cwd=directory, check=False)
        if done.returncode != 0:
            raise SystemExit(f"callgrind run failed in {tree}:\n{done.stderr.decode(errors='replace')[-3000:]}")
        result = json.loads(done.stdout.decode().strip().splitlines()[-1])
        if not result["castor_file"].startswith(str(tree)):
            raise SystemExit(f"{tree}: the child imported castor from {result['castor_file']}")
        dumps = sorted(glob.glob(out + ".*"), key=lambda n: int(n.rsplit(".", 1)[1]))
        if len(dumps) != len(result["labels"]):
            raise SystemExit(f"expected {len(result['labels'])} callgrind dumps, found {len(dumps)}")
        figures: dict[str, float] = {}
        for label, dump in zip(result["labels"], dumps, strict=True):
            if label == "gap":
                continue
            for line in Path(dump).read_text(errors="replace").splitlines():
                if line.startswith(("summary:", "totals:")):
                    figures[label] = int(line.split()[1]) / (runs * steps)
                    break
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], help="a framework (repeatable; default: all)")
    parser.add_argument("--tree", action="append", default=[], help="another checkout to count first")
    parser.add_argument("--no-self", action="store_true", help="count only the --tree checkouts")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import castor

        labels = asyncio.run(_child(args.child, args.steps, args.runs))
        print(json.dumps({"labels": labels, "castor_file": castor.__file__}))
        return
    sys.path.insert(0, str(HERE))
    import frameworks

    trees = [Path(t).resolve() for t in args.tree] + ([] if args.no_self else [HERE.parent])
    print(f"instructions per step (M), {args.steps}-step run, {args.runs} runs per mode")
    print(f"{'framework':<14} {'checkout':<28} " + " ".join(f"{m:>9}" for m in MODES) + f" {'added':>9}")
    for name in args.only or sorted(frameworks.CASES):
        for tree in trees:
            try:
                f = count(tree, name, args.steps, args.runs)
            except SystemExit as failed:
                print(f"{name:<14} {tree.name:<28} failed: {str(failed)[-300:]}")
                continue
            cells = " ".join(f"{f[m] / 1e6:>9.3f}" for m in MODES)
            print(f"{name:<14} {tree.name:<28} {cells} {(f['embedded'] - f['alone']) / 1e6:>9.3f}", flush=True)


if __name__ == "__main__":
    main()
