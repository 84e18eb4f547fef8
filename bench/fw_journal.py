"""Whether two checkouts journal a guarded framework's run byte for byte alike.

    python bench/fw_journal.py --tree /path/to/baseline [--only pydantic-ai] [--steps 20]

A change to a guard's hot path must not change what the journal holds. Each checkout runs this file with
``--child`` (that checkout's ``castor`` on ``PYTHONPATH``, this checkout's bench cases): a ``--steps`` run of
the framework's scripted agent on the memory store and a fork of it replayed from its last step; every
record of both is dumped as the SQLite journal writes it (``model_dump_json``). What differs from one run to
the next whatever the code (ISO timestamps and durations, uuids, pydantic-ai's generated ids, clock times)
is masked; every other byte is compared.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
_MASKS = [
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?"), "<TS>"),
    (re.compile(r"PT\d+(\.\d+)?S"), "<DUR>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<UUID>"),
    (re.compile(r'"finished_at":[0-9.e+-]+'), '"finished_at":<CLOCK>'),
    (re.compile(r"pyd_ai_[0-9a-f]{32}"), "<ID>"),
]


async def _child(name: str, steps: int) -> str:
    sys.path.insert(0, str(HERE))
    import frameworks

    from castor import Castor

    _, guarded, tools = frameworks.CASES[name](steps)
    kernel = Castor(tools=tools)
    live = await kernel.run(guarded)
    replayed = await kernel.run(guarded, checkpoint=live.fork(at_step=len(live.syscall_log)))
    assert live.status == replayed.status == "COMPLETED", (live.status, replayed.status)
    text = "\n".join(f"{label} {record.model_dump_json()}"
                     for label, run in (("live", live), ("replayed", replayed)) for record in run.syscall_log)
    for pattern, mask in _MASKS:
        text = pattern.sub(mask, text)
    return text


def journal(tree: Path, name: str, steps: int) -> str:
    """The masked journal of framework ``name``'s run in checkout ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0")
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", name, "--steps", str(steps)],
                          capture_output=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {done.stderr.decode(errors='replace')[-2000:]}")
    return done.stdout.decode()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", help="the checkout to compare this one with")
    parser.add_argument("--only", action="append", default=[], help="a framework (repeatable; default: pydantic-ai)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(asyncio.run(_child(args.child, args.steps)))
        return
    if not args.tree:
        parser.error("--tree is required")
    for name in args.only or ["pydantic-ai"]:
        before, after = journal(Path(args.tree).resolve(), name, args.steps), journal(HERE.parent, name, args.steps)
        records = before.count("\n")
        verdict = "identical" if before == after else "DIFFERENT"
        print(f"{name}: {records} records, {len(before)} / {len(after)} bytes: {verdict}")
        if before != after:
            for a, b in zip(before.splitlines(), after.splitlines(), strict=False):
                if a != b:
                    print(f"  before: {a[:300]}\n  after:  {b[:300]}")
                    break


if __name__ == "__main__":
    main()
