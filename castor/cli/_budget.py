"""``castor budget``: shared budget scopes that many runs draw from (e.g. a team's daily ``api``).

    castor budget set team-a api=1000 gpu=10    create a scope or change its limits (usage kept)
    castor budget top-up team-a api=500         raise its limits
    castor budget show team-a [--json]          limit, used and left per resource
    castor budget reset team-a                  usage back to zero (a new day)

A run joins scopes with ``castor run ... --scope team-a``; each of its calls then draws from the run's
own budget and from every scope, all or nothing.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from castor.cli._common import add_global_options
from castor.cli._runs import opened, out, out_json, parse_budgets
from castor.cli._watch import add_watch, watched
from castor.errors import ConfigError


def _amounts(args: argparse.Namespace) -> dict[str, float]:
    if not args.amounts:
        raise ConfigError("give at least one resource amount, e.g. api=1000")
    return parse_budgets(args.amounts)


async def cmd_set(args: argparse.Namespace) -> int:
    """Create a scope or change its limits."""
    amounts = _amounts(args)
    async with opened(args, existing=False) as backend:
        await backend.budgets.set_scope(args.scope, amounts)
        return _show(args.scope, await backend.budgets.read_scope(args.scope), as_json=False)


async def cmd_top_up(args: argparse.Namespace) -> int:
    """Raise a scope's limits."""
    amounts = _amounts(args)
    async with opened(args) as backend:
        if not await backend.budgets.read_scope(args.scope):
            raise ConfigError(f"budget scope {args.scope!r} does not exist; create it with castor budget set")
        await backend.budgets.top_up(args.scope, amounts)
        return _show(args.scope, await backend.budgets.read_scope(args.scope), as_json=False)


async def cmd_show(args: argparse.Namespace) -> int:
    """Print a scope's limits and usage."""
    async with opened(args) as backend:
        ledger = await backend.budgets.read_scope(args.scope)
    if not ledger:
        raise ConfigError(f"budget scope {args.scope!r} does not exist")
    return _show(args.scope, ledger, as_json=args.json)


async def cmd_reset(args: argparse.Namespace) -> int:
    """Set a scope's usage back to zero."""
    async with opened(args) as backend:
        if not await backend.budgets.read_scope(args.scope):
            raise ConfigError(f"budget scope {args.scope!r} does not exist")
        await backend.budgets.reset_scope(args.scope)
        return _show(args.scope, await backend.budgets.read_scope(args.scope), as_json=False)


def _show(scope: str, ledger: dict[str, tuple[float, float]], *, as_json: bool) -> int:
    if as_json:
        rows = {r: {"limit": lim, "used": used, "left": max(lim - used, 0.0)} for r, (lim, used) in ledger.items()}
        out_json(json.dumps({"scope": scope, "resources": rows}, indent=2, sort_keys=True))
        return 0
    out(f"Scope: {scope}")
    for resource, (lim, used) in sorted(ledger.items()):
        out(f"  {resource}: {used:g} used / {lim:g} limit, {max(lim - used, 0.0):g} left")
    return 0


def add_commands(subparsers: Any) -> None:
    """Add ``castor budget`` and its sub-commands."""
    budget = subparsers.add_parser(
        "budget", help="shared budget scopes many runs draw from",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    actions = budget.add_subparsers(dest="budget_command", metavar="ACTION", required=True)
    for name, handler, text in (
        ("set", cmd_set, "create a scope or change its limits (usage kept)"),
        ("top-up", cmd_top_up, "raise a scope's limits by the given amounts"),
    ):
        parser = actions.add_parser(name, help=text, description=text)
        parser.add_argument("scope", metavar="SCOPE")
        parser.add_argument("amounts", nargs="*", metavar="K=V", help="e.g. api=1000")
        parser.set_defaults(handler=handler)
    show = actions.add_parser("show", help="limit, used and left per resource")
    show.add_argument("scope", metavar="SCOPE")
    show.add_argument("--json", action="store_true", help="print JSON")
    add_watch(show, "budget show")
    show.set_defaults(handler=watched(cmd_show))
    reset = actions.add_parser("reset", help="set the scope's usage back to zero")
    reset.add_argument("scope", metavar="SCOPE")
    reset.set_defaults(handler=cmd_reset)
    for parser in actions.choices.values():  # --db / --store / --redis after the action, too
        add_global_options(parser, top_level=False)
