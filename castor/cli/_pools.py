"""``castor pools``: every worker pool of the fleet, its queue, its live workers and the tasks waiting on
it. A worker process says it is alive every two seconds (``castor.fleet.workers._heartbeat.Presence``); a pool with
tasks queued and no live worker is one whose calls wait until their deadline. The pools are the config's
(``--config``, or the one found), the queue lengths are read on a Redis broker only.
"""

from __future__ import annotations

import argparse
from typing import Any

from castor.cli._args import add_option


async def pools(args: argparse.Namespace) -> int:
    """List the pools with their live workers and queued tasks; ``--alive POOL``: exit 1 unless it has one."""
    from castor.cli._fleet_views import emit, fleet, fleet_settings, table

    settings = fleet_settings(args)
    rows: list[dict[str, Any]] = []
    async with fleet(args) as (_, client):
        for pool in settings.pool_names:
            rows.append({"pool": pool, "queue": settings.queue_of(pool), "workers": await client.live_workers(pool)})
    await _queued(settings, rows)
    if args.alive is not None:
        row = next((r for r in rows if r["pool"] == args.alive), None)
        live = bool(row and row["workers"])
        print(f"pool {args.alive}: {len(row['workers']) if row else 0} live worker(s)")
        return 0 if live else 1
    text = table(
        [(r["pool"], r["queue"], len(r["workers"]), r["queued"], ", ".join(r["workers"]) or None) for r in rows],
        ("POOL", "QUEUE", "WORKERS", "QUEUED", "NODES"),
    )
    emit(args, rows, text)
    return 0


async def _queued(settings: Any, rows: list[dict[str, Any]]) -> None:
    """Each row's ``queued``: the tasks on its queue (None off a Redis broker)."""
    for row in rows:
        row["queued"] = None
    if settings.broker_transport != "redis":
        return
    from castor.backends.redis import redis_client

    broker = redis_client(settings.broker_url, decode_responses=True)
    try:
        for row in rows:
            # kombu's list for the queue (priority 0), under the fleet's broker key prefix
            row["queued"] = await broker.llen(f"{settings.broker.queue_prefix}:{row['queue']}")
    finally:
        await broker.aclose()


def add_commands(subparsers: Any) -> None:
    """Add ``castor pools``."""
    parser = subparsers.add_parser("pools", help="worker pools: live workers and queued tasks",
                                   description=pools.__doc__)
    parser.add_argument("--alive", default=None, metavar="POOL", help="exit 1 unless POOL has a live worker")
    add_option(parser, "--prefix", default=argparse.SUPPRESS, help="Redis key prefix (default: castor)")
    add_option(parser, "--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=pools, finds_config=True)
