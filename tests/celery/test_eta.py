"""Tasks that ask to run later (an ``eta`` header), forged by anyone who can write to the broker.

Celery holds such a message in the worker's memory until its time and checks nothing before: 2,000 forged
tasks due in an hour were all held, none dead-lettered, and a flood of them would end the worker. Now a
worker holds a message with an ``eta`` only if it is one of its own retries (signed, due within the
longest backoff, a retries count the settings allow, not a copy of a retry it holds); any other is
dead-lettered on receipt (``castor.fleet.workers._eta``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from castor.fleet.workers._eta import HeldRetries

import castor.lib as lib
from castor import Castor
from castor.fleet.wire import encode
from castor.seams import ToolCall

from .checks import dead_letters
from .conftest import Fleet

SECRET = "s" * 64


def call_kwargs(run_id: str, secret: str | None = SECRET, query: str = "later") -> dict[str, Any]:
    return encode(ToolCall(run_id, 0, "search", {"query": query}), "", secret)


def later(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


class Held:
    """A request Celery holds for its eta, as ``HeldRetries`` reads one."""

    def __init__(self, kwargs: dict[str, Any], retries: int) -> None:
        self.kwargs, self.request_dict = kwargs, {"retries": retries}


def test_only_a_signed_retry_due_within_the_backoff_is_held_and_only_once() -> None:
    retries = HeldRetries(SECRET, retry_backoff=1.0, max_retries=3)  # longest backoff 4 s, + 60 s of slack
    signed = call_kwargs("run-a")
    assert retries.problem({"retries": 1}, signed) is None  # no eta: not this check's
    assert retries.problem({"eta": later(2), "retries": 1}, signed, []) is None
    assert retries.problem({"eta": later(60), "retries": 3}, signed, []) is None
    refused = {
        "no coordinator signed": ({"eta": later(2), "retries": 1}, call_kwargs("run-a", secret=None)),
        "signed": ({"eta": later(2), "retries": 1}, call_kwargs("run-a", secret="another secret")),
        # a token hmac cannot compare: checking it raised out of the consumer's strategy, stopping the worker
        "that no coordinator signed": ({"eta": later(2), "retries": 1}, {**signed, "token": "é" * 64}),
        "past the longest retry backoff": ({"eta": later(3600), "retries": 1}, signed),
        "retries count 0": ({"eta": later(2)}, signed),
        "retries count 4": ({"eta": later(2), "retries": 4}, signed),
        "not an ISO 8601 time": ({"eta": "tomorrow", "retries": 1}, signed),
        "malformed": ({"eta": later(2), "retries": 1}, {"run_id": "run-a"}),
    }
    for why, (headers, kwargs) in refused.items():
        reason = retries.problem(headers, kwargs, [])
        assert reason is not None and why in reason, (why, reason)
    holding = [Held(signed, 1)]
    assert "a copy of a retry this worker holds already" in str(retries.problem(
        {"eta": later(2), "retries": 1}, signed, holding))
    assert retries.problem({"eta": later(2), "retries": 2}, signed, holding) is None  # the next retry
    assert retries.problem({"eta": later(2), "retries": 1}, call_kwargs("run-b"), holding) is None
    insecure = HeldRetries(None, retry_backoff=1.0, max_retries=3)  # a development fleet: no token to check
    assert insecure.problem({"eta": later(2), "retries": 1}, call_kwargs("run-a", secret=None), []) is None


async def test_forged_tasks_to_run_later_are_dead_lettered_at_once(fleet: Fleet, kernel: Castor) -> None:
    from celery import Celery

    from castor.backends.redis import keys
    from castor.fleet.celery_config import celery_config

    tag = uuid.uuid4().hex[:6]
    secret = fleet.settings.security.secret
    key = keys.dead_letters(fleet.prefix, "web")
    first = fleet.redis.llen(key)
    forger = Celery("forger", set_as_current=False)
    forger.conf.update(celery_config(fleet.settings))
    queue = fleet.settings.queue_of("web")
    try:
        for i in range(50):  # unsigned, due in half a minute
            forger.send_task("castor.tool.search", kwargs=call_kwargs(f"flood-{tag}-{i}", secret=None),
                             queue=queue, eta=datetime.now(UTC) + timedelta(seconds=30), retries=1)
        # A genuine-looking signed retry, due in an hour: past any backoff of this fleet.
        forger.send_task("castor.tool.search", kwargs=call_kwargs(f"far-{tag}", secret=secret), queue=queue,
                         eta=datetime.now(UTC) + timedelta(hours=1), retries=1)
        # One signed retry, replayed five times: held once, run once. Its call had that retry (as its worker
        # counts it in Redis): a copy numbered as a retry its call never had is refused as it comes due.
        retry = call_kwargs(f"copies-{tag}", secret=secret, query=tag)
        fleet.redis.hset(keys.retries(fleet.prefix, f"copies-{tag}", 0), retry["token"], 1)
        for _ in range(5):
            forger.send_task("castor.tool.search", kwargs=retry, queue=queue,
                             eta=datetime.now(UTC) + timedelta(seconds=2), retries=1)
        # Its token of characters hmac cannot compare: checking it raised out of the consumer (the worker stopped).
        forger.send_task("castor.tool.search", kwargs={**call_kwargs(f"odd-{tag}"), "token": "é" * 64}, queue=queue,
                         eta=datetime.now(UTC) + timedelta(seconds=2), retries=1)
        letters = (await dead_letters(fleet, "web", first + 56, timeout=15))[first:]
        scheduled = await asyncio.to_thread(lambda: forger.control.inspect(timeout=2).scheduled() or {})
    finally:
        forger.close()
    reasons = [letter["reason"] for letter in letters]
    assert sum("no coordinator signed" in r for r in reasons) == 51, reasons
    assert sum("past the longest retry backoff" in r for r in reasons) == 1, reasons
    assert sum("a copy of a retry this worker holds already" in r for r in reasons) == 4, reasons
    held = [entry for entries in scheduled.values() for entry in entries]
    assert len(held) <= 1, held  # at most the one genuine-looking retry, until its time

    deadline = time.monotonic() + 15  # its time comes: it runs (once: the copies were refused)
    while not await kernel.backend.journal.history(f"copies-{tag}"):
        assert time.monotonic() < deadline, fleet.log("web")[-3000:]
        await asyncio.sleep(0.1)

    async def agent() -> object:
        return await lib.tool("search", query=f"after-{tag}")

    done = await kernel.run(agent)
    assert done.status == "COMPLETED", done.error
    assert fleet.workers["web"].poll() is None
