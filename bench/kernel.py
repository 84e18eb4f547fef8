"""Speed of the embedded kernel beside a direct call and beside the published castor-kernel 0.5.1.

    python bench/kernel.py                 # measure, print the table, update docs/benchmarks.md
    python bench/kernel.py --no-write      # measure and print only
    python bench/kernel.py --profile       # where a syscall's time goes (ours only; nothing written)
    python bench/kernel.py --icount [--tree DIR]  # instructions per step under callgrind (beside DIR's)

Run it with the project's venv (``pip install -e '.[dev]'``). The reference is installed on first use
in ``bench/.refvenv`` (git-ignored). Each repetition runs our workload and the reference's in fresh
processes, alternating, so a change in machine load hits both; the figures are medians over the
repetitions. ``bench/README.md`` says what each figure covers. Takes about a minute (plus the
reference venv's creation, once).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _refvenv  # noqa: E402  (bench/ is not a package: its helpers are imported from its own folder)
import _report  # noqa: E402

WORKLOAD = HERE / "_workload.py"
BUSY = "the machine was busy (load average above the core count): every figure is inflated"


def run_workload(python: Path | str, calls: int, *, ours: bool, sqlite: bool) -> dict[str, Any]:
    """One repetition of the workload in a fresh process of ``python``; its figures."""
    cmd = [str(python)]
    if ours:
        env = dict(os.environ, PYTHONPATH=str(ROOT))  # measure this checkout, whatever else is installed
    else:
        env = _refvenv.clean_env()
        cmd.append("-I")  # isolated: nothing of this project on the path
    cmd += [str(WORKLOAD), "--calls", str(calls), "--repeat", "1"]
    if sqlite:
        cmd.append("--sqlite")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE, check=False)
    if done.returncode != 0:
        raise SystemExit(f"workload failed ({'ours' if ours else 'reference'}):\n{done.stderr}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    expected_ref = figures["castor_version"].startswith("0.5.")
    if expected_ref == ours:
        found = f"{figures['castor_version']} from {figures['castor_file']}"
        raise SystemExit(f"the {'ours' if ours else 'reference'} workload imported the wrong castor: {found}")
    return figures


def merge(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate the one-sample lists of several repetitions, key by key."""

    def join(values: list[Any]) -> Any:
        first = values[0]
        if isinstance(first, list):
            return [x for value in values for x in value]
        if isinstance(first, dict):
            return {key: join([value[key] for value in values]) for key in first}
        return first

    return join(samples)


def measure(calls: int, repeat: int, with_reference: bool, with_sqlite: bool) -> tuple[dict[str, Any], Any]:
    """Alternate ours and the reference ``repeat`` times; merged figures of each."""
    ref_python = None
    if with_reference:
        try:
            ref_python = _refvenv.ensure()
        except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
            print(f"warning: no reference measurement ({exc})", file=sys.stderr)
    ours, ref = [], []
    for rep in range(repeat):
        print(f"repetition {rep + 1}/{repeat} ...", file=sys.stderr, flush=True)
        ours.append(run_workload(sys.executable, calls, ours=True, sqlite=with_sqlite))
        if ref_python is not None:
            ref.append(run_workload(ref_python, calls, ours=False, sqlite=False))
    return merge(ours), merge(ref) if ref else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10_000, help="tool calls per run (default 10,000)")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions; figures are medians (default 5)")
    parser.add_argument("--no-reference", action="store_true", help="skip castor-kernel 0.5.1")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite store")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--profile", action="store_true", help="break a syscall's cost down by stage (ours)")
    parser.add_argument("--icount", action="store_true", help="count instructions per step (bench/_icount.py)")
    parser.add_argument("--tree", action="append", default=[], help="with --icount: a baseline checkout first")
    args = parser.parse_args()
    if args.icount:
        import _icount

        _icount.main([arg for tree in args.tree for arg in ("--tree", tree)])
        return
    if args.profile:
        import _breakdown

        _breakdown.main(args.calls, args.repeat, sqlite=not args.no_sqlite)
        return
    info = _report.machine()
    load_start = os.getloadavg()[0]
    ours, ref = measure(args.calls, args.repeat, not args.no_reference, not args.no_sqlite)
    table = _report.rows(ours, ref, args.calls)
    print()
    print(_report.console_table(table, args.calls, args.repeat))
    load_end = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nload average {info['load']} at the start, {load_end} at the end ({info['nproc']} cores)")
    busy = max(load_start, os.getloadavg()[0]) > (os.cpu_count() or 1)
    if busy:
        print("warning: " + BUSY)
    misses = [row.label.strip() for row in table if row.verdict == "MISS"]
    if misses:
        print("missed targets: " + "; ".join(misses) + " (see python bench/kernel.py --profile)")
    if not args.no_write:
        command = "python " + shlex.join(["bench/kernel.py", *sys.argv[1:]])
        notes = [_report.fork_note(ours, ref, args.calls)] + ([f"**Warning**: {BUSY}."] if busy else [])
        section = _report.markdown(table, args.calls, args.repeat, command, info, load_end, notes)
        path = ROOT / "docs" / "benchmarks.md"
        _report.write_section(path, section)
        print(f"wrote the '{_report.HEADING[3:]}' section of {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
