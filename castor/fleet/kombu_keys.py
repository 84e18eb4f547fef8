"""The names kombu's Redis transport stores a message under, asked from kombu itself: the one place Castor
reads its Redis channel's internals.

Castor publishes tasks and task events on a Redis broker itself (``castor.executors._publish``'s
``RedisPublisher``, the worker's ``LeanEventDispatcher``): one pipelined ``LPUSH``/``PUBLISH`` instead of
kombu's two blocking round trips. The supported API for those publishers (the fleet's).
The keys must be the very ones kombu uses, so they come from kombu's channel rather than being rebuilt:
its ``global_keyprefix``, ``_q_for_pri`` (a queue's list key at a priority) and ``_get_publish_topics``
(the channels of a fanout publish). kombu has no public API for them. ``tests/celery/test_broker_loss.py``
fails when the installed kombu leaves the tested range or these methods change their signatures;
``tests/celery/test_publish.py`` compares whole messages with ``send_task``'s.
"""

from __future__ import annotations

from typing import Any


def is_redis_channel(channel: Any) -> bool:
    """Whether ``channel`` is kombu's Redis transport's (whose names the functions below know)."""
    return hasattr(channel, "_get_publish_topics") and hasattr(channel, "_q_for_pri")


def queue_key(channel: Any, queue: str) -> str:
    """The list a task for ``queue`` (priority 0) is pushed on, global key prefix included."""
    return _prefix(channel) + channel._q_for_pri(queue, 0)


def publish_topics(channel: Any, exchange: str, routing_key: str) -> list[str]:
    """The pub/sub channels kombu publishes a fanout message of ``exchange`` on, key prefix included."""
    prefix = _prefix(channel)
    return [prefix + topic for topic in channel._get_publish_topics(exchange, routing_key)]


def _prefix(channel: Any) -> str:
    return getattr(channel, "global_keyprefix", "") or ""
