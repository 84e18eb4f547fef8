"""The Celery configuration every fleet process shares (coordinators send, workers consume).

Plain data, no Celery import: ``workers.app`` and ``CeleryExecutor`` both build their app from it, so a
coordinator and a worker can never disagree on serializer, queues or broker options.
"""

from __future__ import annotations

from typing import Any

from castor.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for the fleet: JSON only, events on, late acks, one task prefetched at a time."""
    transport: dict[str, Any] = {}
    if settings.broker.startswith(("redis://", "rediss://", "unix://")):
        # Redelivering a task that is still running would run it twice: stay above the longest deadline.
        transport["visibility_timeout"] = int(settings.broker_visibility_timeout)
        # Every broker key (queues, unacked, bindings, event channels) under the fleet's prefix.
        transport["global_keyprefix"] = f"{settings.queue_prefix}:"
    return {
        "broker_url": settings.broker,
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
        "task_default_queue": settings.queue_of(settings.default_pool),
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": False,
    }
