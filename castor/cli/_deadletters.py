"""``castor deadletters``: the messages a pool's workers refused without answering anyone.

    castor deadletters [--pool P] [--limit N] [--json]   newest first, every pool unless --pool
    castor deadletters purge --pool P                     forget a pool's dead letters (--all: every pool)

A worker dead-letters a message it cannot take as a task (not Celery's ``[args, kwargs, embed]``, bad
headers, another content type, an undecodable body) or cannot authenticate (no valid token): it is
acknowledged, never run, and nothing is written into the run it names. Each letter says why, when, how
many bytes and their sha256, and what a few headers said; never the body. A pool keeps its newest 1,000.

The Redis and the key prefix are the fleet commands' (``--redis`` / ``--config`` / ``--prefix``).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from castor._limits import option_type
from castor.cli._celery_cmds import config_option
from castor.cli._common import add_global_options
from castor.cli._escape import shown
from castor.errors import ConfigError


def _client(args: argparse.Namespace) -> tuple[Any, str]:
    from castor.backends.redis import redis_client
    from castor.cli._stores import target

    url, prefix, _ = target(args)
    return redis_client(url, sync=True, decode_responses=True), prefix


def _pools(client: Any, prefix: str, pool: str | None) -> list[tuple[str, str]]:
    """``(pool, key)`` of the pools with dead letters (just ``pool`` if given), by name."""
    from castor.backends.redis import keys

    if pool is not None:
        return [(pool, keys.dead_letters(prefix, pool))]
    start = keys.dead_letters(prefix, "")
    found = {key[len(start):]: key for key in client.scan_iter(match=keys.dead_letters_pattern(prefix), count=1000)}
    return sorted(found.items())


def cmd_list(args: argparse.Namespace) -> int:
    """List dead letters, newest first."""
    client, prefix = _client(args)
    try:
        letters: list[dict[str, Any]] = []
        counts: dict[str, int] = {}
        for pool, key in _pools(client, prefix, args.pool):
            counts[pool] = client.llen(key)
            for raw in client.lrange(key, 0, args.limit - 1):
                letters.append({"pool": pool, **_parsed(raw)})
    finally:
        client.close()
    letters.sort(key=lambda d: -float(d.get("at") or 0))
    letters = letters[: args.limit]
    if args.json:
        print(json.dumps({"counts": counts, "letters": letters}, indent=2, sort_keys=True))
        return 0
    if not letters:
        print("no dead letters" + (f" in pool {args.pool!r}" if args.pool else ""))
        return 0
    from castor.cli._fleet_views import age, table

    rows = []
    for d in letters:
        given = d.get("headers")
        headers: dict[str, Any] = given if isinstance(given, dict) else {}
        rows.append((shown(d["pool"]), age(float(d.get("at") or time.time())), _safe(headers.get("task")),
                     _safe(headers.get("castor_run")), d.get("size"), str(d.get("sha256", ""))[:12],
                     _safe(d.get("reason"), 80)))
    print(table(rows, ("POOL", "AGE", "TASK", "RUN", "BYTES", "SHA256", "REASON")))
    print(", ".join(f"{shown(pool)}: {n}" for pool, n in counts.items()))  # a key's name: anyone's
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    """Delete a pool's dead letters (or every pool's, with ``--all``)."""
    if (args.pool is None) == (not args.all):
        raise ConfigError("say which dead letters to purge: --pool NAME, or --all")
    client, prefix = _client(args)
    try:
        chosen = _pools(client, prefix, None if args.all else args.pool)
        removed = sum(client.llen(key) for _, key in chosen)
        if chosen:
            client.delete(*(key for _, key in chosen))
    finally:
        client.close()
    where = "every pool" if args.all else f"pool {args.pool!r}"
    print(f"purged {removed} dead letter{'s' if removed != 1 else ''} of {where}")
    return 0


def _parsed(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {"reason": "(unreadable entry)"}
    return value if isinstance(value, dict) else {"reason": "(unreadable entry)"}


def _safe(value: Any, width: int = 40) -> str:
    """A value a forger chose, printable on a terminal (``shown``, ASCII only), cut to ``width``."""
    if value is None:
        return "-"
    text = shown(value, ascii_only=True)
    return text if len(text) <= width else text[: width - 3] + "..."


def add_commands(subparsers: Any) -> None:
    """Add ``castor deadletters`` and ``castor deadletters purge``."""
    summary = "messages workers refused without answering anyone (malformed or unauthenticated)"
    dead = subparsers.add_parser("deadletters", help=summary, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    dead.set_defaults(handler=cmd_list)
    dead.add_argument("--pool", default=None, help="only this pool's (default: every pool)")
    dead.add_argument("--limit", type=option_type("deadletters --limit"), default=50, metavar="N",
                      help="show at most N, newest first (default 50)")
    dead.add_argument("--json", action="store_true", help="print JSON instead of a table")
    actions = dead.add_subparsers(dest="deadletters_command", metavar="ACTION")
    purge = actions.add_parser("purge", help="delete a pool's dead letters", description="delete a pool's dead letters")
    purge.add_argument("--pool", default=None, help="the pool whose dead letters to delete")
    purge.add_argument("--all", action="store_true", help="every pool's dead letters")
    purge.set_defaults(handler=cmd_purge)
    for parser in (dead, purge):
        config_option(parser)
        parser.add_argument("--prefix", default=argparse.SUPPRESS, help="Redis key prefix (default: castor)")
    add_global_options(purge, top_level=False)  # --redis / --store after the action, too
