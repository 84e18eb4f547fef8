"""The worker's task events (for Flower) on a Redis broker, as one ``PUBLISH`` on a lean socket.

A Celery worker's consumer thread is what bounds its throughput, and a third of that thread's time
went to publishing the task events (``task-received``, ``task-succeeded``...): kombu's producer, its
fanout exchange and a redis-py ``PUBLISH`` with its retry wrapper, for every event. On the Redis
transport an event is only a JSON envelope (kombu's message: base64 body, headers, properties)
published on the channels kombu names for the event exchange and the routing key. ``LeanEvents``
makes the worker's dispatcher write exactly that envelope with one ``PUBLISH`` per channel on a socket
of the publishing thread's own (``castor.fleet.workers._lean``), told to send no replies (``CLIENT REPLY OFF``): the
consumer thread writes and goes on, where it waited a round trip per event. Events are best-effort in
Celery too (a lost one only hides a state change from Flower). Anything else (another transport, no
hiredis, a socket that fails) goes through Celery's own publish, with its buffering when offline.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from typing import Any

from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher
from kombu.utils.json import dumps as kombu_dumps

from castor.fleet.kombu_keys import is_redis_channel, publish_topics

from . import _lean

log = logging.getLogger("castor.worker")


class LeanEventDispatcher(EventDispatcher):
    """Celery's ``EventDispatcher``; on a Redis broker its publish is one ``PUBLISH`` per channel."""

    _lean_client: _lean.LeanClient | None = None
    _lean_topics: dict[str, list[str]]

    def _publish(self, event: Any, producer: Any, routing_key: str, *args: Any, **kwargs: Any) -> None:
        if producer is None:
            return
        topics = self._topics(producer.channel, routing_key)
        client = self._client() if topics else None
        if client is None:
            super()._publish(event, producer, routing_key, *args, **kwargs)
            return
        envelope = json.dumps({
            "body": base64.b64encode(kombu_dumps(event).encode()).decode(),
            "content-encoding": "utf-8", "content-type": "application/json", "headers": self.headers,
            "properties": {
                "delivery_mode": self.delivery_mode,
                "delivery_info": {"exchange": self.exchange.name, "routing_key": routing_key},
                "priority": 0, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
            },
        })
        try:
            for topic in topics:
                client.send("PUBLISH", topic, envelope)
        except Exception as exc:  # the lean socket failed: Celery's path retries or buffers the event
            log.debug("task event on the lean socket failed (%s); publishing it through kombu", exc)
            super()._publish(event, producer, routing_key, *args, **kwargs)

    def _topics(self, channel: Any, routing_key: str) -> list[str]:
        """The channels kombu would publish this event on (global key prefix included); [] off Redis."""
        if not hasattr(self, "_lean_topics"):
            self._lean_topics = {}
        topics = self._lean_topics.get(routing_key)
        if topics is None:
            # [] off kombu's Redis transport: Celery's own publish then
            topics = publish_topics(channel, self.exchange.name, routing_key) if is_redis_channel(channel) else []
            self._lean_topics[routing_key] = topics
        return topics

    def _client(self) -> _lean.LeanClient | None:
        if self._lean_client is None:
            url = self.app.conf.broker_url
            if not _lean.available(url):
                return None
            self._lean_client = _lean.LeanClient(url, replies=False)
        return self._lean_client

    def close(self) -> None:
        """Close the lean sockets with the dispatcher."""
        if self._lean_client is not None:
            self._lean_client.close()
            self._lean_client = None
        super().close()


class LeanEvents(Events):
    """``app.events`` whose dispatcher is ``LeanEventDispatcher`` (``Celery(events=...)``)."""

    dispatcher_cls = "castor.fleet.workers._events:LeanEventDispatcher"
