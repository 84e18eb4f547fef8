"""What a worker checks before Celery starts consuming: its broker and its Redis answer, and on RabbitMQ
whether the broker lets a worker hold a task as long as the longest tool may run.

Celery alone would retry a refused broker connection for minutes, and crash with a traceback on a vhost
that does not exist. A worker that cannot do its job says so in one line (``BackendUnavailable``) and
its process exits; the orchestrator restarts it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

from castor.backends.redis import eviction, hide_password, keys, redis_client, sentinel
from castor.backends.redis.durability import durability_warning
from castor.errors import BackendUnavailable
from castor.fleet.broker import broker_error
from castor.fleet.sealing import secret_proof
from castor.registry import ToolSpec
from castor.settings import Settings, broker_visibility, visibility_warning

log = logging.getLogger("castor.worker")
CONNECT_TIMEOUT = 4.0  # s, for each of the two connections
RABBITMQ_CONSUMER_TIMEOUT = 1800.0  # s: RabbitMQ's consumer_timeout unless rabbitmq.conf sets another


def preflight(app: Any, settings: Settings, tools: Iterable[ToolSpec] = ()) -> None:
    """Connect once to the broker and once to Redis; ``BackendUnavailable`` naming the one that fails.
    Logs what the operator should fix that does not stop the worker (``tools``: those it serves)."""
    server = _broker(app, settings)
    _redis(settings)
    _same_secret(settings)
    tools = list(tools)
    for warning in (visibility_warning(settings, tools), consumer_timeout_warning(settings, server, tools)):
        if warning:
            log.warning(warning)


def _same_secret(settings: Settings) -> None:
    """Say at start, loudly, when the coordinators sign with another secret than this worker's (their
    ``secret_proof`` in Redis differs): every task they send would be dead-lettered unread. Not a refusal:
    a secret being rotated differs for a while."""
    secret = settings.security.secret
    if not secret:
        return
    client = redis_client(settings.redis.url, sync=True, socket_timeout=CONNECT_TIMEOUT)
    try:
        left = client.hgetall(keys.secret_proof(settings.redis.prefix))
    except Exception:  # a proof that cannot be read tells nothing: the worker starts
        return
    finally:
        client.close()
    found = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in (left or {}).items()}
    if found.get("proof") and found["proof"] != secret_proof(secret):
        log.error("this worker's [security] secret is not the one coordinator %s signs tasks with (its proof in "
                  "Redis differs): every task it sends will be dead-lettered unread; give both the same secret",
                  found.get("by", "?"))


def _broker(app: Any, settings: Settings) -> dict[str, Any]:
    """The broker's server properties (RabbitMQ's product and version; nothing on Redis)."""
    try:
        with app.connection_for_read(connect_timeout=CONNECT_TIMEOUT) as connection:
            connection.ensure_connection(max_retries=0)
            return dict(getattr(connection.connection, "server_properties", None) or {})
    except Exception as exc:
        raise broker_error("cannot start the worker", settings.broker_url, exc) from exc


def _redis(settings: Settings) -> None:
    import redis

    client = redis_client(
        settings.redis.url, sync=True, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT
    )
    where = hide_password(settings.redis.url)
    try:
        client.ping()
        memory = _memory(client)
        _durable(client, where)
        if settings.redis.replicas:
            _replicas_connected(client, settings.redis.replicas, where)
    except redis.RedisError as exc:
        raise BackendUnavailable(
            f"cannot start the worker: Redis at {where}, where the fleet's runs, "
            f"journals and approvals live, is unavailable: {sentinel.lookup_failure(exc)}"
        ) from exc
    finally:
        client.close()
    if memory is not None:  # the results and claims a worker writes must not be evicted
        eviction.check(memory, where, allow=settings.redis.allow_eviction)


def _durable(client: Any, where: str) -> None:
    """Say where Redis logs nothing to disk (``castor.backends.redis.durability``)."""
    import redis

    try:
        warning = durability_warning(client.info("persistence"), where)
    except redis.ResponseError:  # INFO refused (renamed on a managed Redis): nothing to say
        return
    if warning is not None:
        log.warning("%s", warning)


def _replicas_connected(client: Any, wanted: int, where: str) -> None:
    """Say where fewer replicas are connected than ``[redis] replicas`` asks: starts wait for them."""
    import redis

    try:
        connected = int(client.info("replication").get("connected_slaves", 0))
    except (redis.ResponseError, ValueError, TypeError):
        return
    if connected < wanted:
        log.warning("Redis at %s has %d connected replica(s) and [redis] replicas = %d: until they connect, every "
                    "call waits for them before it starts", where, connected, wanted)


def _memory(client: Any) -> Any:
    """``INFO memory``, or None where the server refuses ``INFO`` (renamed on a managed Redis)."""
    import redis

    try:
        return client.info("memory")
    except redis.ResponseError as exc:
        log.warning("Redis did not answer INFO memory (%s): whether it may evict keys is not known", exc)
        return None


def consumer_timeout_warning(
    settings: Settings, server: dict[str, Any] | None = None, tools: Iterable[ToolSpec] = ()
) -> str | None:
    """On RabbitMQ, a warning when a tool (of the config, or of ``tools``: those the worker serves, with
    their deadlines declared in code) may run longer than RabbitMQ's default ``consumer_timeout``.

    Past it, RabbitMQ closes the channel of the worker that holds the task and hands the task to another
    worker while the first still runs it (in doubt, or run twice if idempotent). The timeout is a broker
    setting Castor cannot raise from here: a queue argument would make every existing queue's
    redeclaration fail. So the operator is told what to set.
    """
    longest = broker_visibility(settings, tools)  # the Redis broker's visibility timeout: the same bound
    if settings.broker_transport != "amqp" or longest <= RABBITMQ_CONSUMER_TIMEOUT:
        return None
    version = (server or {}).get("version")
    name = f"RabbitMQ {version.decode() if isinstance(version, bytes) else version}" if version else "RabbitMQ"
    needed = math.ceil(longest * 1000)
    return (
        f"a tool here may hold its task for up to {longest:g}s (its deadline with "
        f"retries, and a grace), longer than {name}'s default consumer_timeout of "
        f"{RABBITMQ_CONSUMER_TIMEOUT:g}s: past its consumer_timeout RabbitMQ takes the task back and gives it to "
        f"another worker while this one still runs it. Unless it is set higher already, set "
        f"consumer_timeout = {needed} in rabbitmq.conf"
    )
