"""Publishing a tool task: Celery's own message, without Celery's ``send_task`` on the Redis broker.

``send_task`` costs about 0.9 ms of CPU per call with the ``task-sent`` event on: kombu builds a Redis
client per publish and sends the message and the event in two blocking round trips. On the Redis
transport ``RedisPublisher`` builds the very message ``send_task`` would (Celery protocol 2: headers,
properties, body, in kombu's Redis envelope) and the ``task-sent`` event, and sends them as an
``LPUSH`` on the queue's list and a ``PUBLISH`` on the event channel, in the loop's shared pipeline
(one round trip for every task sent in the same loop iteration). Workers are stock Celery.

Where the message goes is asked from kombu's own channel once (``castor.fleet.kombu_keys``: the queue's
list key with the transport's ``global_keyprefix``, the event channel with its ``keyprefix_fanout``), and
each queue is declared through kombu on first use, as ``send_task`` would. Other transports (amqp, sentinel) use
``SendTaskPublisher``. ``tests/celery/test_publish.py`` compares both publishers' bytes.

A publish that fails — its connection lost, most often — is made once more on a new connection, by
both publishers, before it fails with ``UnsurePublish``. The lost try may have landed (only its reply
or confirm was lost), so the queue can hold two copies of a task: the worker's claim runs the copy
taken first and drops the other (``workers/lua/claim.lua``). Whether either landed is for the executor
to settle (``CeleryExecutor``: it abandons the task, or waits for it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from castor._ids import unique_ids
from castor.errors import BackendUnavailable
from castor.executors._template import Template, quote, slot, value
from castor.fleet.broker import broker_error
from castor.fleet.kombu_keys import publish_topics, queue_key

log = logging.getLogger("castor.publish")
EVENT_EXCHANGE, SENT_ROUTING_KEY = "celeryev", "task.sent"
FAST_SCHEMES = ("redis://", "rediss://")
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
# Both publishers make a failed publish once more, on a new connection, then give up: the worker's claim
# drops the second copy should both tries have landed. kombu's policy for send_task says the same.
RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
PUBLISH_TIMEOUT = 10.0  # s for the broker to take (and confirm) a task, on the send_task path
# Queue declarations (once per queue) run here, not in the loop's default executor: a framework's own
# loop may hold every thread of that one while it waits for the very call being published (CrewAI's
# ``akickoff`` runs its agents' steps there), and the declaration would wait for ever.
_DECLARING = ThreadPoolExecutor(2, thread_name_prefix="castor-declare")


class UnsurePublish(BackendUnavailable):
    """A publish failed after its task may have reached the queue (a worker may still run it)."""


@dataclass(frozen=True, slots=True)
class Task:
    """One task to publish: what ``send_task`` is given."""

    name: str
    task_id: str
    kwargs: dict[str, Any]
    queue: str
    expires: float  # seconds from now
    headers: dict[str, Any]
    kwargsrepr: str


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class RedisPublisher:
    """Celery protocol-2 messages on kombu's Redis transport, through ``conn`` (a ``RespConnection`` or a
    ``RedisConnection``: anything with ``execute(*commands)``)."""

    def __init__(self, app: Any, conn: Any) -> None:
        from celery.utils.nodenames import anon_nodename
        from celery.utils.time import utcoffset
        from kombu.utils.json import dumps

        self._app = app
        self._conn = conn
        self._kombu_dumps = dumps
        self._utcoffset = utcoffset
        self._origin = anon_nodename()
        self._pid = os.getpid()
        self._events = bool(app.conf.task_send_sent_event)
        self._keys: dict[str, str] = {}  # queue -> its list key, once declared
        self._declaring: dict[str, asyncio.Future[str]] = {}
        self._topics: list[str] = []
        self._reply_to = ""
        self._made: dict[tuple[Any, ...], tuple[Template, Template | None]] = {}
        self._tag = unique_ids()
        self._offset, self._offset_at = "", -math.inf
        self._envelope = Template(
            {"body": slot("body"), "content-encoding": "utf-8", "content-type": "application/json",
             "headers": {"hostname": self._origin},
             "properties": {
                 "delivery_mode": 1, "delivery_info": {"exchange": EVENT_EXCHANGE, "routing_key": SENT_ROUTING_KEY},
                 "priority": 0, "body_encoding": "base64", "delivery_tag": slot("tag"),
             }},
            ["body", "tag"],
        )

    async def publish(self, task: Task) -> None:
        """Send ``task`` (and its ``task-sent`` event) in this loop iteration's pipeline; a try that fails
        (its connection lost, most often) is made once more, on a new connection, before giving up."""
        key = self._keys.get(task.queue) or await self._declared(task.queue)
        try:
            failure = self._sent(task, await self._conn.execute(*self._commands(task, key)))
        except BackendUnavailable as exc:  # the connection was lost: the LPUSH may or may not have run
            failure = exc
        if failure is not None:
            await self._again(task, key, failure)

    async def _again(self, task: Task, key: str, failure: Exception) -> None:
        # The first try may have landed (only its reply was lost): the queue then holds two copies, and
        # the worker's claim drops the one taken second. Each copy is encoded anew, with a delivery tag
        # of its own: kombu keeps an unacked task under its tag, and a copy acked under a shared tag
        # would take the other's redelivery with it.
        log.warning("sending %s to queue %s failed (%s); sending it once more", task.task_id, task.queue, failure)
        try:
            again = self._sent(task, await self._conn.execute(*self._commands(task, key)))
        except BackendUnavailable as exc:
            again = exc
        if again is not None:
            raise UnsurePublish(f"cannot send {task.name!r} to queue {task.queue!r} (tried twice): {again}") from again

    def _commands(self, task: Task, key: str) -> list[tuple[str, str, str]]:
        # One round trip carries the task and its event, in send_task's order.
        message, event = self.encode(task)
        commands = [("LPUSH", key, message)]
        if event is not None:
            commands.extend(("PUBLISH", topic, event) for topic in self._topics)
        return commands

    def _sent(self, task: Task, replies: list[Any]) -> Exception | None:
        """The LPUSH's error, if it failed (``execute`` gives error replies in place)."""
        sent, *published = replies
        if isinstance(sent, Exception):
            return sent
        for reply in published:
            if isinstance(reply, Exception):  # the task is queued: a lost event only hides it from Flower
                log.warning("task-sent event of %s not published: %s", task.task_id, reply)
        return None

    def encode(self, task: Task, now: float | None = None) -> tuple[str, str | None]:
        """The task's message and its ``task-sent`` event, as kombu's Redis transport stores them."""
        now = time.time() if now is None else now
        expires = quote((datetime.fromtimestamp(now, UTC) + timedelta(seconds=task.expires)).isoformat())
        try:  # kombu's dumps is json.dumps with a fallback for other types: the same bytes
            body = json.dumps([[], task.kwargs, _EMBED])
        except TypeError:  # a datetime, a UUID...: kombu's encoder tags it, as send_task would
            body = self._kombu_dumps([[], task.kwargs, _EMBED])
        task_id, kwargsrepr = quote(task.task_id), quote(task.kwargsrepr)
        message, sent = self._templates(task)
        headers = [value(v) for v in task.headers.values()]
        text = message.render([task_id, expires, kwargsrepr, quote(_b64(body)), quote(self._tag()), *headers])
        if sent is None:
            return text, None
        if now - self._offset_at >= 60:  # the UTC offset changes twice a year: once a minute is often enough
            self._offset, self._offset_at = value(self._utcoffset()), now
        event = sent.render([task_id, expires, kwargsrepr, self._offset, str(self._app.clock.forward()), repr(now)])
        return text, self._envelope.render([quote(_b64(event)), quote(self._tag())])

    def _templates(self, task: Task) -> tuple[Template, Template | None]:
        """The message and event templates of the task's tool and queue (made on its first task)."""
        key = (task.name, task.queue, task.expires, tuple(task.headers), self._reply_to)
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = self._make(task)
        return made

    def _make(self, task: Task) -> tuple[Template, Template | None]:
        # The documents send_task builds, field for field and in its order, with a slot where a value
        # differs from one task of this tool to the next.
        task_id, kwargsrepr, expires = slot("id"), slot("kwargsrepr"), slot("expires")
        extra = {name: slot(f"h{i}") for i, name in enumerate(task.headers)}
        headers = {
            "lang": "py", "task": task.name, "id": task_id, "shadow": None, "eta": None, "expires": expires,
            "group": None, "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": task_id,
            "parent_id": None, "argsrepr": "()", "kwargsrepr": kwargsrepr, "origin": self._origin,
            "ignore_result": True, "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {}, **extra,
        }
        properties = {
            "correlation_id": task_id, "reply_to": self._reply_to, "kwargsrepr": kwargsrepr,
            "argsrepr": "()", "delivery_mode": 2, "expiration": str(int(task.expires * 1000)),
            "delivery_info": {"exchange": "", "routing_key": task.queue}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": slot("tag"),
        }
        message = Template(
            {"body": slot("body"), "content-encoding": "utf-8", "content-type": "application/json",
             "headers": headers, "properties": properties},
            ["id", "expires", "kwargsrepr", "body", "tag", *(f"h{i}" for i in range(len(extra)))],
        )
        if not self._events:
            return message, None
        sent = {
            "hostname": self._origin, "utcoffset": slot("offset"), "pid": self._pid, "clock": slot("clock"),
            "uuid": task_id, "root_id": task_id, "parent_id": None, "name": task.name, "args": "()",
            "kwargs": kwargsrepr, "retries": 0, "eta": None, "expires": expires, "queue": task.queue,
            "exchange": "", "routing_key": task.queue, "timestamp": slot("now"), "type": "task-sent",
        }
        return message, Template(sent, ["id", "expires", "kwargsrepr", "offset", "clock", "now"])

    async def _declared(self, queue: str) -> str:
        # The first task for a queue declares it through kombu (as send_task's first publish does) and
        # learns the names kombu would use; concurrent first tasks wait for that one declaration.
        pending = self._declaring.get(queue)
        if pending is None:
            pending = self._declaring[queue] = asyncio.get_running_loop().create_future()
            try:
                key, topics = await asyncio.get_running_loop().run_in_executor(_DECLARING, self._declare, queue)
            except Exception as exc:
                del self._declaring[queue]
                error = broker_error(f"cannot declare queue {queue!r}", self._app.conf.broker_url, exc)
                pending.set_exception(error)
                pending.exception()  # retrieved here: the waiters (if any) get it too
                raise error from exc
            self._topics, self._reply_to = topics, self._app.thread_oid
            self._keys[queue] = key
            pending.set_result(key)
        return await asyncio.shield(pending)

    def _declare(self, queue: str) -> tuple[str, list[str]]:
        with self._app.connection_for_write() as connection:
            connection.ensure_connection(**RETRY_POLICY)  # kombu's own default keeps trying for seconds
            channel = connection.default_channel
            self._app.amqp.queues[queue].bind(channel).declare()
            return queue_key(channel, queue), publish_topics(channel, EVENT_EXCHANGE, SENT_ROUTING_KEY)


class SendTaskPublisher:
    """Celery's ``send_task``, for the transports ``RedisPublisher`` does not speak (amqp, sentinel).

    Publishes run one at a time on a thread of their own: a publish to RabbitMQ waits for the broker's
    confirm, which the event loop must not wait for. kombu retries a publish on a new connection as
    ``RETRY_POLICY`` says (once, as ``RedisPublisher`` does); a broker that answers nothing within
    ``PUBLISH_TIMEOUT`` counts as a lost connection.
    """

    def __init__(self, app: Any) -> None:
        self._app = app
        self._producer: Any = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="castor-publish")
        self._closed = False

    async def publish(self, task: Task) -> None:
        """Send ``task`` with ``send_task``; ``BackendUnavailable`` if the broker would not take it."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._send, task)

    def _send(self, task: Task) -> None:
        try:
            if self._producer is None:
                self._producer = self._app.producer_pool.acquire(block=True)
            self._app.send_task(
                task.name, kwargs=task.kwargs, queue=task.queue, routing_key=task.queue, task_id=task.task_id,
                headers=task.headers, expires=task.expires, ignore_result=True, kwargsrepr=task.kwargsrepr,
                argsrepr="()", producer=self._producer, retry=True, retry_policy=RETRY_POLICY,
                timeout=PUBLISH_TIMEOUT, confirm_timeout=PUBLISH_TIMEOUT,
            )
        except Exception as exc:
            self._release()
            what = f"cannot send {task.name!r} to queue {task.queue!r}"
            raise UnsurePublish(str(broker_error(what, self._app.conf.broker_url, exc))) from exc

    def _release(self) -> None:
        if self._producer is not None:
            self._producer.release()
            self._producer = None

    def close(self) -> None:
        """Give the producer back to the pool, on the thread that used it, and end that thread."""
        if self._closed:
            return
        self._closed = True
        self._thread.submit(self._release).result()
        self._thread.shutdown()
