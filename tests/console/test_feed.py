"""Live updates and the webhook: a new pending call reaches an open page's event stream and a local HTTP
receiver (signed, retried after failures, with a link to the approval page)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from castor import Castor
from castor.console.feed import Feed
from castor.console.service import Console
from castor.console.webhook import Webhook, message
from castor.seams import Backend
from castor.settings._console import WebhookSection
from tests.console.conftest import SECRET, Client, auth, cleanup


async def next_event(events: Any, name: str, timeout: float = 10.0) -> dict[str, Any]:
    """The data of the next event called ``name`` on a server-sent event stream."""
    async def read() -> dict[str, Any]:
        async for chunk in events:
            if chunk.startswith(f"event: {name}\n"):
                data: dict[str, Any] = json.loads(chunk.split("data: ", 1)[1])
                return data
        raise AssertionError("the stream ended")
    return await asyncio.wait_for(read(), timeout)


async def test_a_new_pending_call_and_its_decision_reach_the_event_stream(client: Client, kernel: Castor) -> None:
    events = client.state.feed.events()
    hello = await next_event(events, "hello")
    assert hello["count"] == 0
    cp = await kernel.run(cleanup, budgets={"api": 10})  # a call starts waiting while the page is open
    added = await next_event(events, "approvals")
    assert [(r["pid"], r["tool"]) for r in added["added"]] == [(cp.pid, "delete_file")] and added["count"] == 1
    assert SECRET not in json.dumps(added)
    await client.http.post(f"/api/runs/{cp.pid}/approve", json={}, headers=auth("alice"))
    removed = await next_event(events, "approvals")
    assert removed["removed"] and removed["count"] == 0
    await events.aclose()


class Receiver:
    """A chat app's incoming webhook on 127.0.0.1: fails the first ``failures`` posts with 500."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.delivered = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                ok = len(receiver.posts) > receiver.failures
                self.send_response(200 if ok else 500)
                self.end_headers()
                if ok:
                    receiver.delivered.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=2)
    try:
        yield r
    finally:
        r.close()


async def test_the_webhook_posts_a_signed_message_and_retries(
    backend: Backend, kernel: Castor, receiver: Receiver
) -> None:
    hook = Webhook(WebhookSection(url=receiver.url, secret="s3cret", retries=3, backoff=0.05),
                   "http://console.example:8765")
    feed = Feed(Console(backend), interval=0.05, on_new=hook.notify)
    await feed.start()
    try:
        cp = await kernel.run(cleanup, budgets={"api": 10})
        assert await asyncio.to_thread(receiver.delivered.wait, 15)
    finally:
        await feed.stop()
        await hook.drain()
    assert len(receiver.posts) == 3 and hook.sent == 1  # two 500s, then delivered
    headers, body = receiver.posts[-1]
    sent = json.loads(body)
    assert cp.pid in sent["text"] and "delete_file" in sent["text"]
    assert sent["castor"]["url"] == f"http://console.example:8765/approvals#{cp.pid}"
    assert SECRET not in body.decode()
    mac = hmac.new(b"s3cret", headers["x-castor-timestamp"].encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["x-castor-signature"] == f"sha256={mac}"


async def test_the_webhook_gives_up_after_its_retries(receiver: Receiver) -> None:
    hook = Webhook(WebhookSection(url=receiver.url, retries=1, backoff=0.01), "http://c")
    row = {"pid": "r1", "step": 0, "tool": "t", "arguments": {}, "reason": "", "agent": "a"}
    assert await hook.deliver(message(row, "http://c")) is False
    assert len(receiver.posts) == 2 and hook.sent == 0


async def test_the_webhook_signs_the_time_it_sends_so_a_receiver_can_refuse_a_replay() -> None:
    """``X-Castor-Timestamp`` is the time of the POST, and the signature covers it: a receiver that refuses
    an old timestamp refuses a replayed message, and a replay under a fresh timestamp no longer verifies."""
    receiver = Receiver(failures=0)
    try:
        hook = Webhook(WebhookSection(url=receiver.url, secret="s3cret", retries=0), "http://c")
        row = {"pid": "r1", "step": 0, "tool": "t", "arguments": {}, "reason": "", "agent": "a"}
        before = time.time()
        assert await hook.deliver(message(row, "http://c")) is True
        after = time.time()
    finally:
        receiver.close()
    [(headers, body)] = receiver.posts
    stamp = headers["x-castor-timestamp"]
    assert int(before) - 1 <= int(stamp) <= after + 1
    signed = hmac.new(b"s3cret", stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["x-castor-signature"] == f"sha256={signed}"
    replayed = hmac.new(b"s3cret", str(int(stamp) + 600).encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["x-castor-signature"] != f"sha256={replayed}"
