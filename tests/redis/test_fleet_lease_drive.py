"""A fleet coordinator drives a run under a lease, and a process driving it embedded (``Castor.run`` on the
fleet's Redis, a host program, an MCP gateway) under the run's drive claim. The drive claim now sees the
lease: while a coordinator holds the run, nothing else drives it; it used to drive beside the coordinator,
and a plain call ran in both."""

from __future__ import annotations

import asyncio

import redis

from castor import Castor
from castor.backends.redis import keys
from castor.lib import tool
from castor.seams import DRIVE_STEP, Backend


async def test_a_drive_claim_is_held_while_a_fleet_coordinator_leases_the_run(
    backend: Backend, redis_url: str, redis_prefix: str
) -> None:
    lease = keys.lease(redis_prefix, "r")
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(lease, "co-1/abc", px=30_000)
        found = await backend.journal.claim("r", DRIVE_STEP, 0, "here:1:x", 15)
        assert (found.state, found.holder, found.expired) == ("held", "fleet:co-1/abc", False)
        # a holder taken for gone is replaced only in the claims: the coordinator's lease still holds the drive
        again = await backend.journal.claim("r", DRIVE_STEP, 0, "here:1:x", 15, replace="fleet:co-1/abc")
        assert again.state == "held"
        assert (await backend.journal.claim("r", 0, 0, "here:1:x", 15)).state == "claimed"  # steps: not the lease's
        client.delete(lease)  # the coordinator let the run go (parked it, ended it)
        assert (await backend.journal.claim("r", DRIVE_STEP, 0, "here:1:x", 15)).state == "claimed"
    finally:
        client.close()


async def test_an_embedded_drive_waits_while_a_coordinator_leases_the_run(redis_url: str, redis_prefix: str) -> None:
    calls: list[str] = []

    async def note(text: str) -> str:
        calls.append(text)
        return text

    async def agent() -> object:
        return await tool("note", text="once")

    store = f"{redis_url}?prefix={redis_prefix}"
    client = redis.Redis.from_url(redis_url)
    kernel = Castor(tools=[note], store=store)
    try:
        client.set(keys.lease(redis_prefix, "leased"), "co-1/abc", px=30_000)
        driving = asyncio.create_task(kernel.run(agent, pid="leased"))
        await asyncio.sleep(0.5)
        assert not driving.done() and calls == []  # waiting for the coordinator's drive to end
        client.delete(keys.lease(redis_prefix, "leased"))
        cp = await asyncio.wait_for(driving, 10)
        assert (cp.status, calls) == ("COMPLETED", ["once"])
    finally:
        await kernel.close()
        client.close()
