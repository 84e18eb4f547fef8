"""The worker's task events on a Redis broker leave by a lean PUBLISH with no reply to wait for, in
the very envelope kombu's producer writes (Flower reads them: ``test_flower``)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any

import pytest
import redis
from castor.fleet.workers._events import LeanEventDispatcher
from castor.fleet.workers.app import make_app
from celery.events.dispatcher import EventDispatcher

import castor.lib as lib
from castor import Castor

from .conftest import Fleet


def _next(pubsub: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message and message["type"] == "pmessage":
            return dict(json.loads(message["data"]))
    raise AssertionError("no event arrived")


def test_lean_events_are_the_envelope_kombu_writes(fleet: Fleet) -> None:
    app = make_app(fleet.settings, name="events-test")
    listener = redis.Redis.from_url(fleet.settings.broker_url).pubsub()
    listener.psubscribe(f"{fleet.settings.broker.queue_prefix}:*celeryev*")
    _next_subscribed = listener.get_message(timeout=2)
    assert _next_subscribed is not None and _next_subscribed["type"] == "psubscribe"
    with app.connection_for_write() as connection:
        lean = app.events.Dispatcher(connection, hostname="lean@test", enabled=True)
        stock = EventDispatcher(connection, hostname="lean@test", enabled=True, app=app)
        try:
            assert isinstance(lean, LeanEventDispatcher)
            lean.send("task-received", uuid="t-1", name="castor.tool.write_note")
            ours = _next(listener)
            stock.send("task-received", uuid="t-1", name="castor.tool.write_note")
            theirs = _next(listener)
        finally:
            lean.close()
            stock.close()
    listener.close()
    for envelope in (ours, theirs):
        envelope["properties"].pop("delivery_tag")
    ours_body, theirs_body = (json.loads(base64.b64decode(e.pop("body"))) for e in (ours, theirs))
    assert ours == theirs  # headers, content type, encoding, exchange, routing key, delivery mode
    for moving in ("timestamp", "clock", "local_received"):
        ours_body.pop(moving, None)
        theirs_body.pop(moving, None)
    assert ours_body == theirs_body
    assert ours_body["type"] == "task-received" and ours_body["hostname"] == "lean@test"


def test_the_events_socket_asks_for_no_replies(fleet: Fleet) -> None:
    app = make_app(fleet.settings, name="events-test")
    admin = redis.Redis.from_url(fleet.settings.broker_url)
    before = admin.info("commandstats").get("cmdstat_publish", {}).get("calls", 0)
    with app.connection_for_write() as connection:
        lean = app.events.Dispatcher(connection, hostname="quiet@test", enabled=True)
        try:
            for n in range(200):
                lean.send("task-succeeded", uuid=f"t-{n}", runtime=0.001)
            sock = lean._lean_client._local.conn.sock  # type: ignore[union-attr]  # this thread's socket
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                sock.recv(100)  # no reply to the PING, none to the 200 PUBLISHes before it
        finally:
            lean.close()
    deadline = time.monotonic() + 5  # the server has them all, in its own time
    while admin.info("commandstats").get("cmdstat_publish", {}).get("calls", 0) < before + 200:
        assert time.monotonic() < deadline, "the events did not reach Redis"
        time.sleep(0.05)
    admin.close()


def _events_of(pubsub: Any, pid: str, until: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The task events naming run ``pid`` in their kwargs, read until ``until(events)`` holds."""
    mine: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not until(mine):
        assert time.monotonic() < deadline, f"events of {pid} seen so far: {mine}"
        message = pubsub.get_message(timeout=0.2)
        if message and message["type"] == "pmessage":
            body = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
            # A buffered group (task-succeeded and the like) comes as one list.
            mine.extend(e for e in (body if isinstance(body, list) else [body]) if pid in str(e.get("kwargs")))
    return mine


async def test_a_retried_task_shows_its_arguments_redacted(fleet: Fleet, kernel: Castor) -> None:
    tag, password = (f"{what}-{uuid.uuid4().hex[:6]}" for what in ("login", "pw"))
    listener = redis.Redis.from_url(fleet.settings.broker_url).pubsub()
    listener.psubscribe(f"{fleet.settings.broker.queue_prefix}:*celeryev*")
    subscribed = listener.get_message(timeout=2)
    assert subscribed is not None and subscribed["type"] == "psubscribe"

    async def agent() -> object:
        return await lib.tool("flaky_login", tag=tag, password=password)

    try:
        cp = await kernel.run(agent)
        assert cp.status == "COMPLETED", cp.error
        assert cp.result == "logged in after 2 starts"
        # The worker's retry is a new message: its task-sent (from the worker) and task-received events.
        events = await asyncio.to_thread(
            _events_of, listener, cp.pid,
            lambda seen: {"task-sent", "task-received"} <= {e["type"] for e in seen if e.get("retries") == 1},
        )
    finally:
        listener.close()
    retried = [e for e in events if e.get("retries") == 1]
    for event in retried:
        assert password not in event["kwargs"] and "token" not in event["kwargs"], event
        assert "'password': '***'" in event["kwargs"] and event.get("args") in (None, "()"), event
    assert password not in fleet.log("web")
