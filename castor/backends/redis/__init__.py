"""The Redis backend: run state shared by every process of the fleet, and the one Redis stack they use.

``redis_backend("redis://[:password@]host:6379/0")`` bundles ``RedisJournal``, ``RedisBudgetStore``,
``RedisApprovalStore`` and ``RedisRunStore`` over one ``RedisConnection``. Every key name is built in
``keys``. ``admin`` holds what the operator's CLI calls (scopes, pending approvals, sweeps).

The connection stack, one of each:

- **RESP core** (``resp``): the encoder, the hiredis reply parser, the handshake a URL asks for (``AUTH``,
  ``SELECT``) and the errors, with two faces: ``RespConnection`` (asyncio, multiplexed: the stores'
  scripts, the coordinator's task publishing and reply reading) and the worker's
  ``castor.fleet.workers._lean.LeanClient`` (blocking, one socket per pool thread: its claim and finish).
  Where hiredis is missing or the URL is not plain ``redis://``, the same calls go through redis-py.
- **redis-py clients** come from ``redis_client()`` (asyncio or sync): the driver never sends a command again
  by itself. ``RedisConnection`` adds a client per event loop whose single commands share one pipeline per
  loop iteration (``_batch``).
- **Scripts** (``scripts``): ``Script`` reads each Lua script from the package of the code that owns it (the
  stores' ``lua/`` here, the coordinator's ``scheduler/lua/fleet_*.lua``, the worker's ``workers/lua/``) and
  runs it by its SHA1, loading it where the server forgot it.
- **One retry policy**: ``RedisConnection`` repeats a call once, after a script the server forgot (it did not
  run) or, where the operation is safe to repeat, after a lost connection; everything else becomes
  ``BackendUnavailable`` (or ``StaleLeaseError``, or ``ConfigError`` for a Redis Cluster). The worker's claim
  and finish ask again on their own terms (``castor.fleet.workers._scripts``: a claim under its receipt).
- **One redaction of URLs**: ``hide_password`` (``castor._redact``) wherever a URL is shown.
- **Sentinel** (``sentinel``): a ``redis+sentinel://`` URL gives redis-py clients and pools that ask the
  Sentinels where the primary is at each connection (never the lean connections: they follow plain URLs).
"""

from __future__ import annotations

import os
from typing import Any

from castor._redact import hide_password
from castor._sealing import DataKey
from castor.backends.redis._client import Fence, RedisConnection, redis_client
from castor.backends.redis.approvals import RedisApprovalStore
from castor.backends.redis.budgets import RedisBudgetStore
from castor.backends.redis.journal import RedisJournal
from castor.backends.redis.runs import WEEK, RedisRunStore
from castor.errors import ConfigError
from castor.seams import Backend

__all__ = [
    "Fence",
    "RedisApprovalStore",
    "RedisBudgetStore",
    "RedisConnection",
    "RedisJournal",
    "RedisRunStore",
    "hide_password",
    "redis_backend",
    "redis_client",
]

OPTIONS: dict[str, Any] = {
    # connection
    "max_connections": 50,
    "socket_timeout": 5.0,
    "socket_connect_timeout": 2.0,
    "lean_connection": True,
    # runs
    "retention_seconds": WEEK,
    # budgets
    "reservation_seconds": 3600.0,
    "holder": None,
    # approvals
    "approval_ttl": None,
    "expiry_outcome": "reject",
    "expiry_reason": "approval expired",
    "stream_maxlen": 10_000,
    # embedded runs: every non-idempotent call claimed before it runs (castor.seams.Backend.at_most_once)
    "at_most_once": False,
    # a Redis that may evict keys (a maxmemory and a policy but noeviction) is refused unless this is true
    "allow_eviction": False,
    # a claim or record counts once this many replicas acknowledged it (WAIT), waited for replica_timeout s
    "replicas": 0,
    "replica_timeout": 1.0,
}


def redis_backend(url: str, *, prefix: str = "castor", data_key: DataKey | None = None, **options: Any) -> Backend:
    """The four state seams on the Redis server at ``url``, their keys under ``prefix``.

    Options (unknown ones are a ``ConfigError``): ``max_connections`` (per event loop),
    ``socket_timeout``, ``socket_connect_timeout``, ``lean_connection`` (scripts over hiredis on a socket
    of their own where it can; False: everything through redis-py), ``retention_seconds`` (finished runs),
    ``reservation_seconds`` (how long a charge's holder may take before a sweep refunds it), ``holder``,
    ``approval_ttl`` (seconds a call may wait; None: forever), ``expiry_outcome`` / ``expiry_reason``
    (the decision an expired call gets), ``stream_maxlen`` (decisions kept on the stream), ``at_most_once``
    (every non-idempotent call of a run driven on this store claimed before it runs), ``allow_eviction``
    (drive runs on a Redis that may evict keys: ``castor.backends.redis.eviction``), ``replicas`` /
    ``replica_timeout`` (a claim or record counts once that many replicas have it: ``castor.backends.redis.replicas``).
    ``data_key`` seals sensitive arguments (default: the fleet's, from ``$CASTOR_SECRET``; see
    ``castor._sealing``).
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown Redis backend option(s) {', '.join(unknown)}; known: {', '.join(sorted(OPTIONS))}"
        )
    if not prefix or "{" in prefix or "}" in prefix:
        raise ConfigError(f"Redis key prefix {prefix!r} must be non-empty and hold no braces")
    o = {**OPTIONS, **options}
    if o["expiry_outcome"] not in ("reject", "modify"):
        raise ConfigError(f"expiry_outcome must be 'reject' or 'modify', not {o['expiry_outcome']!r}")
    conn = RedisConnection(
        url,
        max_connections=int(o["max_connections"]),
        socket_timeout=float(o["socket_timeout"]),
        socket_connect_timeout=float(o["socket_connect_timeout"]),
        lean=bool(o["lean_connection"]),
        allow_eviction=bool(o["allow_eviction"]),
        replicas=int(o["replicas"]),
        replica_timeout=float(o["replica_timeout"]),
    )
    fences: dict[str, Fence] = {}  # one table: a run's journal writes, charges and saves pass the same fence
    journal = RedisJournal(conn, prefix, fences)
    budgets = RedisBudgetStore(
        conn, prefix, reservation_seconds=float(o["reservation_seconds"]), holder=o["holder"], fences=fences
    )
    approvals = RedisApprovalStore(
        conn, prefix, approval_ttl=o["approval_ttl"], expiry_outcome=o["expiry_outcome"],
        expiry_reason=o["expiry_reason"], stream_maxlen=int(o["stream_maxlen"]),
    )
    runs = RedisRunStore(conn, prefix, journal, retention_seconds=float(o["retention_seconds"]), fences=fences)
    key = data_key or DataKey.for_fleet(os.environ.get("CASTOR_SECRET"))
    return Backend(
        journal, budgets, approvals, runs, url=hide_password(url), durable=True, answers_inline=False, data_key=key,
        at_most_once=bool(o["at_most_once"]),
    )
