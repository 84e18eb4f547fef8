"""Sensitive values (nested) on a real fleet: encrypted on the broker, in no Redis key, in no worker's log
(not even a worker of another pool, which Celery makes log the whole body of a task it does not serve),
in no CLI view; the tool still receives the real value, and approve and replay still work."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import sys
import time
import uuid
from typing import Any

import redis

from castor import Castor
from castor.executors.celery import fleet_options
from castor.lib import tool

from .conftest import ROOT, Fleet

MARK = "s3cr3t-marker-fleet-51d0"
GOT = hashlib.sha256(MARK.encode()).hexdigest()


async def agent() -> list[str]:
    first = await tool("sealed_login", user="ann", creds={"password": MARK, "realm": "corp"})
    second = await tool("sealed_rotate", target="db", options={"auth": [{"token": MARK}]})
    return [first["got"], second["got"]]


def dump(client: redis.Redis, prefix: str) -> bytes:
    """Every value under the test's key prefix, as bytes."""
    parts: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        kind = client.type(key)
        if kind == b"string":
            parts.append(client.get(key) or b"")
        elif kind == b"hash":
            parts += [b"%s=%s" % kv for kv in client.hgetall(key).items()]
        elif kind == b"zset":
            parts += client.zrange(key, 0, -1)
        elif kind == b"list":
            parts += client.lrange(key, 0, -1)
        elif kind == b"set":
            parts += list(client.smembers(key))
        elif kind == b"stream":
            parts += [repr(entry).encode() for entry in client.xrange(key)]
    return b"\n".join(parts)


def castor_cli(fleet: Fleet, *args: str) -> str:
    store = f"{fleet.settings.redis.url}?prefix={fleet.prefix}"
    done = subprocess.run([sys.executable, "-m", "castor", *args, "--store", store], cwd=ROOT, env=fleet.env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout + done.stderr


async def test_a_sensitive_value_stays_sealed_across_the_fleet(fleet: Fleet, kernel: Castor) -> None:
    pid = f"sealed-{uuid.uuid4().hex[:8]}"
    cp = await kernel.run(agent, pid=pid)
    assert cp.status == "SUSPENDED_FOR_HITL", cp.error
    assert cp.syscall_log[0].response["got"] == GOT  # the worker decrypted the real value
    for args in (("approvals",), ("approvals", "--json"), ("inspect", pid), ("inspect", pid, "--json")):
        shown = castor_cli(fleet, *args)
        assert "sealed_rotate" in shown and MARK not in shown, args
    assert MARK.encode() not in dump(fleet.redis, fleet.prefix)

    await kernel.approve(pid, by="alice")  # executed on the fs pool from the pending call, sealed in Redis
    cp = await kernel.run(agent, checkpoint=await kernel.aload(pid))
    assert cp.status == "COMPLETED" and cp.result == [GOT, GOT]  # step 0 and 1 replayed by digest
    assert MARK.encode() not in dump(fleet.redis, fleet.prefix)
    assert MARK not in fleet.log("fs") + fleet.log("web")


async def test_the_broker_body_and_another_pools_log_hold_no_sensitive_value(fleet: Fleet) -> None:
    # The tool routed to a pool no worker serves: its task waits on the queue, to be read there.
    pools = {pool: tuple(t for t in tools if t != "sealed_login") for pool, tools in fleet.settings.pools.items()}
    settings = fleet.settings.updated(pools={**pools, "nobody": ("sealed_login",)})
    kernel = Castor(**fleet_options(settings, budgets={}))
    queue = settings.queue_of("nobody")
    run = asyncio.create_task(kernel.run(agent, pid=f"broker-{uuid.uuid4().hex[:8]}"))
    try:
        deadline = time.monotonic() + 10
        while not (found := [k for k in fleet.redis.scan_iter(match=f"*{queue}") if fleet.redis.type(k) == b"list"]):
            assert time.monotonic() < deadline and not run.done(), "the task never reached the queue"
            await asyncio.sleep(0.02)
        [key] = found  # kombu's list: the transport's key prefix, then the queue
        [message] = fleet.redis.lrange(key, 0, -1)
        body = base64.b64decode(json.loads(message)["body"])
        kwargs: dict[str, Any] = json.loads(body)[1]
        assert MARK.encode() not in message + body
        assert kwargs["checked"]["creds"]["password"].startswith("***aead:")  # what the tool runs with
        assert kwargs["arguments"]["creds"]["password"].startswith("***hmac:")  # what the journal keeps
        token = kwargs["token"]

        # Handed to the web pool, which does not serve the tool: Celery logs the unknown task.
        fleet.redis.rpoplpush(key, key[: -len(queue)] + settings.queue_of("web").encode())
        deadline = time.monotonic() + 15
        while "castor.tool.sealed_login" not in fleet.log("web"):
            assert time.monotonic() < deadline, "the web worker never received the task"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the rest of the record
        log = fleet.log("web")
        assert "unregistered task" in log and "<body withheld:" in log
        assert MARK not in log and token not in log and "***aead:" not in log
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await kernel.close()
