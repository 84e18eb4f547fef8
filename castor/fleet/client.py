"""The fleet from the operator's side: submit runs to the coordinators' queue, decide and cancel them,
see which coordinator drives what. The coordinators' own side is ``castor.fleet.scheduler``.

Against the fleet a decision is only recorded: the Redis approval store announces it on the decision
stream and a coordinator resumes the run. A run is the fleet's while it is queued, leased or parked.
redis is imported lazily, so ``import castor`` never loads it.

Part of the fleet's supported API (``castor.fleet``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from castor import _code
from castor._ids import pid_part
from castor._imports import parse_spec
from castor._redact import hide_password
from castor._terminal import cancelled, nothing_waits
from castor.backends.redis import keys
from castor.backends.redis.scripts import STORE_SCRIPTS
from castor.checkpoint import AgentCheckpoint
from castor.errors import BackendUnavailable, ConfigError, NothingPendingError, RunExistsError, RunNotFoundError
from castor.kernel import forks
from castor.kernel.cancel import cancellable, ended, mark_cancelled, through, top_driver
from castor.kernel.runner import new_checkpoint
from castor.seams import DRIVE_STEP, Backend, Decision, DecisionOutcome


def new_run(
    agent: str,
    tools: Sequence[str],
    *,
    destructive: Sequence[str] = (),
    budgets: Mapping[str, float] | None = None,
    speculative: bool = False,
    scopes: Sequence[str] = (),
    pid: str | None = None,
) -> AgentCheckpoint:
    """A run ready to submit: its checkpoint, stamped with the import specs and source hashes of its code."""
    spec = _code.run_spec(agent, tools, destructive)
    unknown = set(destructive) - {parse_spec(t).name for t in tools}
    if unknown:
        raise ConfigError(f"destructive names tools that are not among the run's tools: {', '.join(sorted(unknown))}")
    name = parse_spec(agent).name
    cp = new_checkpoint(pid or f"{pid_part(name)}-{uuid.uuid4().hex[:8]}", name, dict(budgets or {}))
    cp.speculative = speculative
    cp.scopes = list(scopes)
    cp.spec = spec
    return cp


def owner_of(token: str | None) -> str | None:
    """The coordinator name inside a fencing token ``<name>/<nonce>``."""
    return token.rpartition("/")[0] if token else None


class FleetClient:
    """Fleet-wide Redis operations an operator (or a test) needs; one asyncio Redis client."""

    def __init__(self, url: str, prefix: str = "castor", *, client: Any = None) -> None:
        if client is None:
            from castor.backends.redis import redis_client

            client = redis_client(url, decode_responses=True)
        self.url = url
        self.prefix = prefix
        self.redis = client
        self._submit = STORE_SCRIPTS["fleet_submit"].register(client)

    async def close(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()

    async def _call(self, what: str, awaitable: Any) -> Any:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            return await awaitable
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            where = hide_password(self.url)
            raise BackendUnavailable(f"cannot {what}: Redis at {where} is unreachable ({exc})") from exc

    # --- runs -------------------------------------------------------------------------------------

    async def submit(self, backend: Backend, checkpoint: AgentCheckpoint, *, stored: bool = False) -> str:
        """Store a new run (unless ``stored``) and queue it for the coordinators; returns its pid.
        ``RunExistsError`` if the store holds the run already, or it was submitted already: marking and
        queueing are one script, so a run is queued once however many submit it at once. On the fleet's
        own Redis store a new run is stored, marked and queued in one transaction (a submitter that dies
        has done all or nothing)."""
        if checkpoint.spec is None:
            raise ConfigError(f"run {checkpoint.pid!r} has no spec: a coordinator could not rebuild its kernel")
        if not stored:
            await forks.refuse_leftover(backend, checkpoint.pid)
            if self._is_store(backend):  # the fleet's own store: stored and queued in one transaction
                await backend.runs.create_submitted(checkpoint)  # type: ignore[attr-defined]
                return checkpoint.pid
            await backend.runs.create(checkpoint)
        p = self.prefix
        queued = await self._call(
            "submit the run", self._submit(keys=[keys.submitted(p), keys.run_queue(p)], args=[checkpoint.pid])
        )
        if not queued:
            raise RunExistsError(checkpoint.pid, "it was submitted to the fleet already")
        return checkpoint.pid

    async def submit_fork(self, backend: Backend, parent_pid: str, child: AgentCheckpoint, at_step: int) -> str:
        """Store the fork ``child`` and submit it, once (``castor.kernel.forks``): ``RunExistsError`` to every
        forker but one. On the fleet's own Redis store the fork's header is stored, marked and queued in one
        transaction; a fork stored by a forker that stopped before submitting it (another store, an earlier
        release) is submitted here."""
        hint = "it was submitted to the fleet already (fork under another name with --pid NEW)"
        await forks.share_prefix(backend, parent_pid, child, at_step, hint)
        header = forks.header_of(child, at_step)
        try:
            if self._is_store(backend):  # stored, marked and queued in one transaction, as a new run is
                await backend.runs.create_submitted(header)  # type: ignore[attr-defined]
                return child.pid
            await backend.runs.create(header)
        except RunExistsError:
            stored = await backend.runs.load(child.pid)
            # Its pointer is this fork's (share_prefix passed): a RUNNING header no one submitted is a fork
            # whose forker stopped, or is about to submit it; the script lets one of us do it.
            if stored is None or stored.status != "RUNNING" or await self.was_submitted(child.pid):
                raise RunExistsError(child.pid, hint) from None
        try:
            return await self.submit(backend, child, stored=True)
        except RunExistsError:
            raise RunExistsError(child.pid, hint) from None

    def _is_store(self, backend: Backend) -> bool:
        """Whether ``backend``'s runs are kept in this fleet's Redis, under its prefix."""
        from castor.backends.redis.runs import RedisRunStore

        return isinstance(backend.runs, RedisRunStore) and backend.runs.lives_at(self.url, self.prefix)

    async def was_submitted(self, pid: str) -> bool:
        """Whether the run was submitted to the fleet (then its fork is too)."""
        return bool(await self._call("read the fleet", self.redis.sismember(keys.submitted(self.prefix), pid)))

    async def enqueue(self, pid: str) -> None:
        """Queue a run behind those waiting (fresh submissions enter at the left)."""
        await self._call("queue the run", self.redis.lpush(keys.run_queue(self.prefix), pid))

    async def fleet_state(self, pids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Per pid: ``owner`` (the coordinator leasing it), ``parked`` (the step it waits on), ``queued``, and
        ``driven_by``: the process that drives it outside the fleet (``castor run --store``, a program with its
        pid, an MCP gateway: its live drive claim's holder), which coordinators wait for."""
        pids = list(pids)
        p = self.prefix
        async with self.redis.pipeline(transaction=False) as pipe:
            for pid in pids:
                pipe.get(keys.lease(p, pid))
                pipe.hget(keys.claims(p, pid), str(DRIVE_STEP))
            pipe.hgetall(keys.parked(p))
            pipe.lrange(keys.run_queue(p), 0, -1)
            pipe.time()
            out = await self._call("read the fleet's state", pipe.execute())
        n = 2 * len(pids)
        parked_steps, queue, (seconds, micros) = out[n], set(out[n + 1]), out[n + 2]
        now = seconds + micros / 1e6
        return {
            pid: {"owner": owner_of(out[2 * i]), "parked": _int(parked_steps.get(pid)), "queued": pid in queue,
                  "driven_by": live_holder(out[2 * i + 1], now)}
            for i, pid in enumerate(pids)
        }

    async def is_fleet_run(self, pid: str) -> bool:
        """Whether the fleet holds the run: queued, leased or parked (then decisions only get recorded)."""
        state = (await self.fleet_state([pid]))[pid]
        return bool(state["owner"] or state["parked"] is not None or state["queued"])

    async def decide(
        self, backend: Backend, pid: str, outcome: DecisionOutcome, by: str, reason: str = ""
    ) -> Decision:
        """Record a decision on the run's pending call; the coordinator that wakes on it resumes the run."""
        header = await backend.runs.load(pid)
        if header is None:
            raise RunNotFoundError(pid)
        pending = await backend.approvals.pending(pid)
        if not pending:  # as stored now: a cancel that dropped the call may have landed since the read
            raise nothing_waits(await backend.runs.load(pid) or header, outcome)
        call = pending[0]
        try:
            return await backend.approvals.decide(Decision(pid, call.step, outcome, by, time.time(), reason))
        except NothingPendingError:
            now = await backend.runs.load(pid)
            if now is not None and cancelled(now):  # cancelled since the read: say so, not "no pending call"
                raise nothing_waits(now, outcome) from None
            raise

    async def cancel(self, backend: Backend, pid: str, by: str) -> str:
        """Stop a run wherever it is (a child agent's: the run that drives it); returns what happened
        (``cancelled`` or ``cancel requested``)."""
        top = await top_driver(backend, pid)
        if top != pid:
            return through(pid, top, await self.cancel(backend, top, by))
        header = await cancellable(backend, pid)
        # A preempted run nobody holds is driven by no one: stopped here, not left waiting for a driver.
        idle = header.status == "PREEMPTED" and not await self.is_fleet_run(pid)
        p = self.prefix
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(keys.cancelled(p), pid)
            pipe.hdel(keys.parked(p), pid)
            pipe.xadd(keys.control_stream(p), {"cmd": "cancel", "run": pid, "by": by}, maxlen=10_000)
            _, was_parked, _ = await self._call("cancel the run", pipe.execute())
        if not was_parked and not idle:
            return "cancel requested"  # its coordinator (or the next to take it) stops it
        stopped = await mark_cancelled(backend, header, by)
        await self._call("cancel the run", self.redis.srem(keys.cancelled(p), pid))
        if not stopped:
            return f"ended meanwhile ({ended(header)}); nothing was cancelled"
        return str(stopped)

    # --- coordinators -----------------------------------------------------------------------------

    async def coordinators(self) -> list[dict[str, Any]]:
        """Live coordinators with their load, from their registrations (a dead one drops out)."""
        p = self.prefix
        now_ms = time.time() * 1000
        entries = await self._call(
            "list coordinators", self.redis.zrangebyscore(keys.coordinators(p), now_ms, "+inf", withscores=True)
        )
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, _ in entries:
                pipe.hgetall(keys.coordinator(p, name))
            infos = await self._call("list coordinators", pipe.execute())
        rows = []
        for (name, _), info in zip(entries, infos, strict=True):
            if not info:
                continue
            seen = float(info.get("seen", 0)) / 1000
            rows.append({
                "name": name,
                "host": info.get("host", ""),
                "pid": _int(info.get("pid")),
                "driving": _int(info.get("driving")) or 0,
                "concurrency": _int(info.get("concurrency")) or 0,
                "taken": _int(info.get("taken")) or 0,
                "state": info.get("state", ""),
                "seen_ago": max(time.time() - seen, 0.0),
            })
        return sorted(rows, key=lambda r: r["name"])

    async def live_workers(self, pool: str, ttl: float = 10.0) -> list[str]:
        """The worker processes of ``pool`` that said they were alive within ``ttl`` seconds (their
        ``Presence``)."""
        since = time.time() - ttl
        found = await self._call("list the pool's workers", self.redis.zrangebyscore(
            keys.pool_workers(self.prefix, pool), since, "+inf"))
        return sorted(found)

    async def leave_secret_proof(self, proof: str, by: str) -> bool:
        """Record ``proof`` (``castor.fleet.sealing.secret_proof``) as the secret coordinators sign with,
        for workers to compare theirs at start; whether the one it replaces was another."""
        key = keys.secret_proof(self.prefix)
        before = await self._call("read the secret's proof", self.redis.hget(key, "proof"))
        await self._call("leave the secret's proof",
                         self.redis.hset(key, mapping={"proof": proof, "by": by, "at": time.time()}))
        return before is not None and (before.decode() if isinstance(before, bytes) else before) != proof

    async def live_pools(self, ttl: float = 10.0) -> list[str]:
        """The pools with a worker process that said it was alive within ``ttl`` seconds."""
        marker = keys.pool_workers(self.prefix, "")
        pools = []
        async for key in self.redis.scan_iter(match=f"{marker}*", count=500):
            name = (key.decode() if isinstance(key, bytes) else key)[len(marker):]
            if await self.live_workers(name, ttl):
                pools.append(name)
        return sorted(pools)

    async def counts(self) -> dict[str, int]:
        """How many runs are queued, leased and parked across the fleet."""
        p = self.prefix
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(keys.run_queue(p))
            pipe.zcard(keys.leased(p))
            pipe.hlen(keys.parked(p))
            queued, leased, parked = await self._call("count runs", pipe.execute())
        return {"queued": queued, "leased": leased, "parked": parked}


def live_holder(claim: Any, now: float) -> str | None:
    """The holder of a drive claim (``<attempt>|<lease end>|<holder>``) whose lease runs past ``now`` (Redis's
    clock), else None (none, lapsed, or not Castor's)."""
    if not isinstance(claim, str):
        return None
    _, lease_end, holder = [*claim.split("|", 2), "", ""][:3]
    try:
        live = float(lease_end) > now
    except ValueError:
        return None
    return holder if live and holder else None


def _int(value: Any) -> int | None:
    return int(value) if value not in (None, "") else None
