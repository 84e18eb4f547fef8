"""``castor ps`` and ``castor inspect``: read-only views of the runs in the store."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from castor._limits import option_type
from castor.cli._live import live_summaries
from castor.cli._render import inspect_json, inspect_lines, ps_json, ps_line
from castor.cli._runs import load_run, opened, out, out_json
from castor.cli._stores import DEFAULT_DB, given_stores, other_store
from castor.cli._watch import add_watch
from castor.kernel.children import pending_child

STATUSES = {
    "running": "RUNNING", "run": "RUNNING",
    "suspended_for_hitl": "SUSPENDED_FOR_HITL", "suspended": "SUSPENDED_FOR_HITL", "hitl": "SUSPENDED_FOR_HITL",
    "completed": "COMPLETED", "done": "COMPLETED",
    "preempted": "PREEMPTED", "prem": "PREEMPTED",
    "failed": "FAILED", "fail": "FAILED",
}


def status_name(text: str) -> str:
    """A status as ``ps --status`` accepts it: the full name or the marker word, any case."""
    try:
        return STATUSES[text.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"unknown status {text!r}: use one of RUNNING, SUSPENDED_FOR_HITL (hitl), COMPLETED (done), "
            "PREEMPTED (prem), FAILED (fail)"
        ) from None


async def cmd_ps(args: argparse.Namespace) -> int:
    """List runs, newest first."""
    async with opened(args) as backend:
        runs = await live_summaries(backend, await backend.runs.list(status=args.status, limit=args.limit))
    if args.json:
        out_json(ps_json(runs))
    elif not runs:
        out("No agents found.")  # 0.5.1's line; where else the runs may be goes to stderr
        # Said once: under --watch the same args come back every frame, and the hint would scroll the log.
        elsewhere = other_store(args) if args.status is None and not getattr(args, "hinted", False) else ""
        missing = getattr(args, "missing_store", None)
        if missing and given_stores(args) and not getattr(args, "hinted", False):  # a mistyped --db
            print(f"castor: no store at {missing} (none was made)", file=sys.stderr)
            args.hinted = True
        elif elsewhere:
            print(f"castor: ./{DEFAULT_DB} holds no runs: {elsewhere}", file=sys.stderr)
            args.hinted = True
    else:
        out(*(ps_line(run) for run in runs))
    return 0


async def cmd_inspect(args: argparse.Namespace) -> int:
    """Show a run: status, budgets, every step with its flags, failures, the pending call, result or error."""
    async with opened(args) as backend:
        cp = await load_run(backend, args.pid)  # its budgets' usage from its journal, while it runs too
        decision = None
        if cp.pending_hitl:
            target = pending_child(cp) or cp
            step = target.pending_step if target.pending_step is not None else len(target.syscall_log)
            decision = await backend.approvals.decision(target.pid, step)
    if args.json:
        out_json(inspect_json(cp))
        return 0
    out(*inspect_lines(cp))
    if decision is not None:
        out(f"Decision: {decision.outcome} by {decision.by} (recorded; applied when the run resumes)")
    return 0


def add_commands(subparsers: Any) -> None:
    """Register ps and inspect."""
    ps = subparsers.add_parser("ps", help="list runs", description=cmd_ps.__doc__)
    ps.add_argument("--status", type=status_name, metavar="S", help="only runs with this status (e.g. hitl, done)")
    ps.add_argument("--limit", type=option_type("ps --limit"), default=100, metavar="N",
                    help="at most N runs (default 100)")
    ps.add_argument("--json", action="store_true", help="print JSON")
    add_watch(ps, "ps")  # run again by the fleet-aware handler's wrapper (castor.cli._fleet_cmds)
    ps.set_defaults(handler=cmd_ps)

    inspect = subparsers.add_parser("inspect", help="show one run", description=cmd_inspect.__doc__)
    inspect.add_argument("pid", metavar="PID")
    inspect.add_argument("--json", action="store_true", help="print the checkpoint as JSON")
    inspect.set_defaults(handler=cmd_inspect)
