"""The Celery configuration every fleet process shares (coordinators send, workers consume).

Plain data, no Celery import: ``castor.fleet.workers.app`` and ``CeleryExecutor`` both build their app from it, so a
coordinator and a worker can never disagree on serializer, queues or broker options.

The broker's own options differ by transport. On Redis, kombu emulates acks: an unacked task comes back
after ``visibility_timeout``, kept above the longest tool deadline (a worker counts the deadlines its
tools declare in code too), and every broker key lives under the
fleet's queue prefix. RabbitMQ has neither: an unacked task comes back when its worker's channel
closes, or when the worker holds it past the broker's ``consumer_timeout`` (30 minutes by default,
set in rabbitmq.conf: a worker warns at start when a tool deadline is longer). A Redis behind Sentinel
(``redis+sentinel://``, ``castor.backends.redis.sentinel``) is kombu's ``sentinel://`` transport, given
the service's name. A coordinator publishing
to RabbitMQ waits for the broker's confirm, or a task written to a connection the broker had closed
would be lost without an error (kombu then retries the publish on a new connection).

Part of the fleet's supported API (``castor.fleet``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from castor.backends.redis.sentinel import is_sentinel, parse
from castor.registry import ToolSpec
from castor.settings import Settings, broker_visibility


def celery_config(settings: Settings, *, publisher: bool = False, tools: Iterable[ToolSpec] = ()) -> dict[str, Any]:
    """Celery settings for the fleet: JSON only, events on, late acks, one task prefetched at a time;
    ``publisher`` for a process that sends the tool tasks (a coordinator); ``tools`` those the process
    serves (a worker), whose deadlines the broker's visibility timeout must exceed."""
    transport: dict[str, Any] = {}
    broker_url = settings.broker_url
    if is_sentinel(broker_url):  # Redis behind Sentinel: kombu's transport of it, told the service's name
        target = parse(broker_url)
        broker_url = target.kombu_url()
        transport["master_name"] = target.service
        if target.sentinel_password:
            transport["sentinel_kwargs"] = {"password": target.sentinel_password}
    if settings.broker_transport == "redis":
        # Redelivering a task that is still running would run it twice: stay above the longest deadline
        # (rounded up: int() could land a fraction of a second below it).
        transport["visibility_timeout"] = math.ceil(broker_visibility(settings, tools))
        # Every broker key (queues, unacked, bindings, event channels) under the fleet's prefix.
        transport["global_keyprefix"] = f"{settings.broker.queue_prefix}:"
    elif publisher:
        # Not on workers: each of their task events would wait for the broker too.
        transport["confirm_publish"] = True
    return {
        "broker_url": broker_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": settings.queue_of(settings.workers.default_pool),
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": False,
    }
