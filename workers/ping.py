"""``castor worker --ping --pool P``: is a worker of pool P alive and consuming its queue?

Celery's own ``celery inspect ping`` cannot tell: it knows neither the fleet's broker key prefix (on Redis,
every broker key lives under ``<queue_prefix>:``) nor which pool a worker serves, so in a container it
never passed. This asks on the fleet's own Celery app (the settings' broker, transport options and key
prefix) which workers consume the pool's queue, and answers within ``timeout`` seconds. It is the worker
containers' health check.
"""

from __future__ import annotations

import socket
from typing import Any

from castor.fleet.broker import broker_error
from castor.settings import Settings


def pool_workers(settings: Settings, pool: str, timeout: float = 5.0, *, here: bool = True) -> list[str]:
    """The node names of the workers that consume ``pool``'s queue and answered within ``timeout``
    seconds; ``here``: only those on this host (a container's health check is about its own worker)."""
    from .app import make_app

    queue = settings.queue_of(pool)
    app = make_app(settings)
    try:
        replies = _active_queues(app, settings, timeout)
    finally:
        app.close()
    host = socket.gethostname()
    # Anyone who reaches the broker can answer too: an answer of another shape counts for nobody (it once
    # raised, and the health check failed a healthy worker).
    nodes = [
        node for node, queues in replies.items()
        if isinstance(node, str) and isinstance(queues, list)
        and any(isinstance(q, dict) and q.get("name") == queue for q in queues)
        and (not here or node.rpartition("@")[2] == host)
    ]
    return sorted(nodes)


def _active_queues(app: Any, settings: Settings, timeout: float) -> dict[str, Any]:
    try:
        with app.connection_for_write(connect_timeout=min(timeout, 5.0)) as connection:
            connection.ensure_connection(max_retries=0)
            inspect = app.control.inspect(timeout=timeout, connection=connection)
            return dict(inspect.active_queues() or {})
    except Exception as exc:
        raise broker_error("cannot ping the workers", settings.broker_url, exc) from exc


def ping_line(settings: Settings, pool: str, nodes: list[str], timeout: float, here: bool) -> str:
    """What ``castor worker --ping`` prints."""
    queue = settings.queue_of(pool)
    if nodes:
        return f"pool {pool}: {len(nodes)} worker(s) consume {queue}: {', '.join(nodes)}"
    where = " on this host" if here else ""
    return f"pool {pool}: no worker{where} consumes {queue} (none answered within {timeout:g}s)"
