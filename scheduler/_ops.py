"""The coordinator's Redis operations: take runs off the queue, lease, renew, release, park, wake, sweep.

Every state change that must be atomic is one Lua script (``scheduler/lua/fleet_*.lua``); the
heartbeat renews every lease a coordinator holds in one pipelined round trip. Blocking reads (the take,
the decision stream) use their own connection so they never hold up the rest.
"""

from __future__ import annotations

import uuid
from typing import Any

from castor.backends.redis import keys, redis_client
from castor.backends.redis.scripts import Script
from castor.fleet.client import FleetClient

SCRIPTS = {  # this package's lua/ (named by __package__: it follows the package wherever it is installed)
    n: Script.of(__package__ or "castor.fleet.scheduler", f"fleet_{n}")
    for n in ("acquire", "renew", "release", "unpark", "requeue_expired", "due", "bury", "register")
}


class FleetOps:
    """One coordinator's view of the fleet keys."""

    def __init__(self, url: str, prefix: str, name: str) -> None:
        self.name = name
        self.prefix = prefix
        self.client = FleetClient(url, prefix)
        self.redis = self.client.redis
        # A separate pool for blocking commands: a BLMOVE or XREAD BLOCK holds its connection.
        self.blocking = redis_client(url, decode_responses=True, socket_timeout=None)
        self._scripts = {n: script.register(self.redis) for n, script in SCRIPTS.items()}
        self.taking = keys.taking(prefix, name)

    async def close(self) -> None:
        """Close both connection pools."""
        await self.blocking.aclose()
        await self.client.close()

    def new_token(self) -> str:
        """A fencing token naming this coordinator: ``<name>/<nonce>``."""
        return f"{self.name}/{uuid.uuid4().hex[:12]}"

    async def _run(self, script: str, keys_: list[str], args: list[Any], client: Any = None) -> Any:
        return await self.client._call(
            f"run fleet script {script}", self._scripts[script](keys=keys_, args=args, client=client)
        )

    # --- taking and leasing ---------------------------------------------------------------------

    async def take(self, timeout: int) -> str | None:
        """Move the next queued pid onto this coordinator's taking list (None after ``timeout`` seconds)."""
        return await self.client._call(
            "take a run",
            self.blocking.blmove(keys.run_queue(self.prefix), self.taking, timeout, "RIGHT", "LEFT"),
        )

    async def acquire(
        self, pid: str, token: str, lease_ms: int, max_takeovers: int = 3
    ) -> tuple[str, Any]:
        """Lease a taken run: ``('ok', takeovers in a row)``, ``('quarantine', takeovers)`` (leased, but taken
        over more than ``max_takeovers`` times in a row), ``('cancelled', None)``, ``('held', holder token)``,
        or ``('driven', (holder, seconds left))`` while a process drives it embedded (its drive claim): the
        pid stays on the taking list, to be acquired again once that drive ends."""
        p = self.prefix
        run_keys = [
            keys.lease(p, pid), keys.leased(p), self.taking, keys.cancelled(p), keys.lapsed(p), keys.takeovers(p),
            keys.claims(p, pid),
        ]
        out = await self._run("acquire", run_keys, [pid, token, lease_ms, max_takeovers])
        status = str(out[0])
        if status == "driven":
            return status, (str(out[1]), int(out[2]) / 1000)
        if len(out) < 2:
            return status, None
        return status, (str(out[1]) if status == "held" else int(out[1]))

    async def renew(self, leases: dict[str, str], lease_ms: int) -> set[str]:
        """Extend every lease in ``leases`` (pid -> token) in one round trip; returns the pids lost."""
        if not leases:
            return set()
        p = self.prefix
        pids = list(leases)
        async with self.redis.pipeline(transaction=False) as pipe:
            for pid in pids:
                await self._scripts["renew"](
                    keys=[keys.lease(p, pid), keys.leased(p)], args=[pid, leases[pid], lease_ms], client=pipe
                )
            out = await self.client._call("renew leases", pipe.execute())
        return {pid for pid, ok in zip(pids, out, strict=True) if not ok}

    async def release(self, pid: str, token: str, mode: str, step: int = -1) -> int:
        """Give the lease up: ``done``, ``requeue`` (another coordinator continues) or ``park`` at ``step``.

        Returns 1, 2 if a park found the run cancelled, 0 if the lease was lost already.
        """
        p = self.prefix
        run_keys = [
            keys.lease(p, pid), keys.leased(p), keys.run_queue(p), keys.parked(p), keys.cancelled(p), keys.takeovers(p),
        ]
        return int(await self._run("release", run_keys, [pid, token, mode, step]))

    async def unpark(self, pid: str) -> bool:
        """Queue a parked run once, whoever else tries too."""
        return bool(await self._run("unpark", [keys.parked(self.prefix), keys.run_queue(self.prefix)], [pid]))

    async def refuse(self, pid: str, token: str, why: str) -> None:
        """Release a run this coordinator will not resume and set it aside until one that may does."""
        if await self.release(pid, token, "done"):
            await self.client._call("set a run aside", self.redis.hset(keys.refused(self.prefix), pid, why))

    async def refused_runs(self) -> list[str]:
        """The runs set aside (for a code change, or code a coordinator could not import)."""
        return list(await self.client._call("read refused runs", self.redis.hkeys(keys.refused(self.prefix))))

    async def claim_refused(self, pid: str) -> bool:
        """Take a run set aside, unless another coordinator took it first."""
        return bool(await self.client._call("claim a run", self.redis.hdel(keys.refused(self.prefix), pid)))

    async def parked(self) -> dict[str, int]:
        """Every parked run and the step it waits on."""
        raw = await self.client._call("read parked runs", self.redis.hgetall(keys.parked(self.prefix)))
        return {pid: int(step) for pid, step in raw.items()}

    async def forget_cancel(self, pid: str) -> None:
        """The cancel of ``pid`` is carried out."""
        await self.client._call("clear a cancel", self.redis.srem(keys.cancelled(self.prefix), pid))

    # --- recovery -------------------------------------------------------------------------------

    async def requeue_expired(self, limit: int = 500) -> list[str]:
        """Queue runs whose lease ran out (their coordinator died or stalled); returns them."""
        p = self.prefix
        due = await self._run("due", [keys.leased(p)], [limit])
        queued = []
        for pid in due:
            run_keys = [keys.lease(p, pid), keys.leased(p), keys.run_queue(p), keys.lapsed(p)]
            if await self._run("requeue_expired", run_keys, [pid]):
                queued.append(pid)
        return queued

    async def bury_dead(self) -> dict[str, int]:
        """Forget coordinators whose registration ran out, queueing what they took; name -> runs queued."""
        p = self.prefix
        buried = {}
        for name in await self._run("due", [keys.coordinators(p)], [100]):
            if name == self.name:
                continue  # this process is alive by definition; its next heartbeat registers it again
            n = await self._run(
                "bury", [keys.coordinators(p), keys.taking(p, name), keys.run_queue(p), keys.coordinator(p, name)],
                [name],
            )
            if int(n) >= 0:
                buried[name] = int(n)
        return buried

    async def reclaim_own(self) -> int:
        """At start-up: queue what a previous process of the same name took but never leased."""
        n = 0
        while await self.client._call(
            "reclaim taken runs", self.redis.lmove(self.taking, keys.run_queue(self.prefix), "RIGHT", "RIGHT")
        ):
            n += 1
        return n

    # --- registry -------------------------------------------------------------------------------

    async def register(self, ttl_ms: int, info: dict[str, Any]) -> None:
        """Say this coordinator is alive for ``ttl_ms`` more, with its load."""
        p = self.prefix
        args: list[Any] = [self.name, ttl_ms]
        for field, value in info.items():
            args += [field, value]
        await self._run("register", [keys.coordinators(p), keys.coordinator(p, self.name)], args)

    async def unregister(self) -> None:
        """Leave the registry (a clean exit)."""
        p = self.prefix
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.coordinators(p), self.name)
            pipe.delete(keys.coordinator(p, self.name))
            await self.client._call("unregister", pipe.execute())

    # --- wake-ups -------------------------------------------------------------------------------

    async def stream_tail(self) -> dict[str, str]:
        """The last entry id of the decision and control streams: read what comes after them."""
        p = self.prefix
        out = {}
        for stream in (keys.decision_stream(p), keys.control_stream(p)):
            last = await self.client._call("read a stream", self.redis.xrevrange(stream, count=1))
            out[stream] = last[0][0] if last else "0-0"
        return out

    async def read_events(self, cursor: dict[str, str], block_ms: int) -> list[tuple[str, dict[str, str]]]:
        """Decisions and operator commands after ``cursor`` (advanced in place), waiting up to ``block_ms``."""
        reply = await self.client._call(
            "read the decision stream", self.blocking.xread(dict(cursor), block=block_ms, count=500)
        )
        events = []
        for stream, entries in reply or []:
            for entry_id, fields in entries:
                cursor[stream] = entry_id
                events.append((stream, fields))
        return events
