"""``RedisApprovalStore``: pending calls of every run, decided once, announced on a stream.

Per run, one hash holds ``p:<step>`` (the pending call), ``e:<step>`` (when it expires), ``d:<step>``
(the decision) and ``r:<step>`` (the call it decided, moved there from ``p:<step>`` by the same script, so
a worker can check that an unsigned task is the approved call). A fleet-wide sorted set lists pending
calls oldest first. Deciding is one script: the first decision wins, later ones get
``AlreadyDecidedError`` naming who decided, and the decision is added to the decision stream in the same
script, so waiters (``wait``) wake without polling: one ``XREAD BLOCK`` reader per event loop serves every
waiter of that loop.

A step has approval rounds (``PendingApproval.attempt``): ``a:<step>`` holds the current round. A
request for a later round (the step went in doubt after its worker was lost) drops the earlier
decision, so it no longer authorizes the step; a decision is stamped with the round it decides.

A pending call may expire (``approval_ttl`` or its own ``expires_at``, taken as a duration from its
``created_at``); once it has, the configured outcome (reject, with a reason) is recorded as its decision,
lazily by whoever looks at it next, or by ``sweep()``. Expiry is judged by Redis's clock (``TIME`` in the
scripts), never by a client's: a requester or an approver whose clock is off cannot stretch a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from dataclasses import replace
from typing import Any

from pydantic_core import to_json

from castor.backends.redis import keys
from castor.backends.redis._client import RedisConnection
from castor.backends.redis._listener import DecisionListener
from castor.errors import AlreadyDecidedError, NothingPendingError
from castor.seams import Decision, DecisionOutcome, PendingApproval

EXPIRY_BY = "castor-expiry"


def _decision(data: str) -> Decision:
    return Decision(**json.loads(data))


def _pending(data: str, expires: str | None = None) -> PendingApproval:
    """The request as stored; its expiry is the one the script set by Redis's clock ('e:<step>')."""
    pending = PendingApproval(**json.loads(data))
    return pending if expires is None else replace(pending, expires_at=float(expires))


class RedisApprovalStore:
    """Approvals every process shares; see the module docstring."""

    def __init__(
        self,
        conn: RedisConnection,
        prefix: str,
        *,
        approval_ttl: float | None = None,
        expiry_outcome: DecisionOutcome = "reject",
        expiry_reason: str = "approval expired",
        stream_maxlen: int = 10_000,
    ) -> None:
        self._conn = conn
        self._prefix = prefix
        self.approval_ttl = approval_ttl
        self.expiry_outcome: DecisionOutcome = expiry_outcome
        self.expiry_reason = expiry_reason
        self.stream_maxlen = stream_maxlen

    def _keys(self, run_id: str) -> list[str]:
        p = self._prefix
        return [keys.approvals(p, run_id), keys.approvals_pending(p), keys.approvals_expiring(p)]

    async def request(self, pending: PendingApproval) -> None:
        """Record a call waiting for a decision (again for the same step: no-op)."""
        # Only a duration crosses: the script sets the deadline by Redis's clock (readers take it from 'e:').
        ttl = self.approval_ttl if pending.expires_at is None else pending.expires_at - pending.created_at
        await self._conn.script(
            "approval_request",
            self._keys(pending.run_id),
            [
                pending.step, to_json(dataclasses.asdict(pending)), repr(pending.created_at),
                "" if ttl is None else repr(max(float(ttl), 0.0)), keys.step_member(pending.run_id, pending.step),
                pending.attempt,
            ],
        )

    def _expiry(self, run_id: str, step: int, now: float, attempt: int) -> str:
        decision = Decision(run_id, step, self.expiry_outcome, EXPIRY_BY, now, self.expiry_reason, attempt)
        return json.dumps(dataclasses.asdict(decision))

    async def _decide(
        self, run_id: str, step: int, decision: Decision | None, now: float | None = None
    ) -> list[str]:
        """Run the decide script on the step's current round; ``decision`` None only applies the expiry
        if the call has expired (by Redis's clock, or by ``now`` if that is later: a sweep's cutoff).
        The decision is stamped with the round's number."""
        key = keys.approvals(self._prefix, run_id)
        for _ in range(3):  # a new round opened between the read and the script: read it again
            at = time.time() if now is None else now  # only what the expiry's record says; the script judges
            attempt = int(await self._conn.command("hget", key, f"a:{step}") or 0)
            chosen = "" if decision is None else json.dumps(dataclasses.asdict(replace(decision, attempt=attempt)))
            result: list[str] = await self._conn.script(
                "approval_decide",
                [*self._keys(run_id), keys.decision_stream(self._prefix)],
                [
                    step, chosen, keys.step_member(run_id, step), "" if now is None else repr(now),
                    self._expiry(run_id, step, at, attempt), run_id, self.stream_maxlen, attempt,
                ],
            )
            if result[0] != "stale":
                return result
        return ["none"]

    async def decide(self, decision: Decision) -> Decision:
        """Record a decision: the first one wins; it is announced on the decision stream."""
        status, *rest = await self._decide(decision.run_id, decision.step, decision)
        if status == "ok":
            return _decision(rest[0])
        where = f"run {decision.run_id!r} step {decision.step}"
        if status == "none":
            raise NothingPendingError(f"{where} has no pending call to decide")
        prior = _decision(rest[0])
        if status == "decided" and replace(prior, attempt=decision.attempt) == decision:
            return prior  # our own decision, written by an attempt whose reply was lost
        err = AlreadyDecidedError(
            decision.run_id, decision.step, prior.outcome, prior.by, at=prior.at, reason=prior.reason
        )
        err.decision = prior  # type: ignore[attr-defined]
        raise err

    async def decision(self, run_id: str, step: int) -> Decision | None:
        """The decision on a step, if there is one (an expired call gets its expiry outcome now)."""
        key = keys.approvals(self._prefix, run_id)
        decided, expires = await self._conn.command("hmget", key, f"d:{step}", f"e:{step}")
        if decided is not None:
            return _decision(decided)
        if expires is not None:
            return await self.expire(run_id, step)  # the script judges it by Redis's clock
        return None

    async def decided_request(self, run_id: str, step: int) -> PendingApproval | None:
        """The call the step's current decision answered (None while it waits or without a decision)."""
        decided = await self._conn.command("hget", keys.approvals(self._prefix, run_id), f"r:{step}")
        return None if decided is None else _pending(decided)

    async def expire(self, run_id: str, step: int) -> Decision | None:
        """Record the expiry outcome if the call has expired; the step's decision either way."""
        _status, *rest = await self._decide(run_id, step, None)
        return _decision(rest[0]) if rest else None

    async def pending(self, run_id: str | None = None) -> list[PendingApproval]:
        """Calls still waiting, oldest first (of one run, or across the fleet)."""
        p = self._prefix
        if run_id is not None:
            key = keys.approvals(p, run_id)
            fields = await self._conn.command("hgetall", key)
            found = [_pending(v, fields.get(f"e:{k[2:]}")) for k, v in fields.items() if k.startswith("p:")]
        else:
            found = await self._fleet_pending()
        now = time.time()
        waiting = []
        for item in sorted(found, key=lambda item: item.created_at):
            # This clock only picks which calls to ask about; the script says whether one expired.
            if item.expires_at is not None and item.expires_at <= now and await self.expire(item.run_id, item.step):
                continue
            waiting.append(item)
        return waiting

    async def _fleet_pending(self) -> list[PendingApproval]:
        p = self._prefix
        index = keys.approvals_pending(p)
        members: list[str] = await self._conn.command("zrange", index, 0, -1)
        located = [(m, *m.split(":", 1)) for m in members]

        async def read(c: Any) -> list[Any]:
            async with c.pipeline(transaction=False) as pipe:
                for _member, step, run in located:
                    pipe.hmget(keys.approvals(p, run), f"p:{step}", f"e:{step}")
                return await pipe.execute()

        rows = await self._conn.run(read) if located else []
        found, stale = [], []
        for (member, _step, _run), (row, expires) in zip(located, rows, strict=True):
            if row is None:
                stale.append(member)  # its run was cleared: drop the index entry
            else:
                found.append(_pending(row, expires))
        if stale:
            await self._conn.command("zrem", index, *stale)
        return found

    async def wait(self, run_id: str, step: int, timeout: float | None = None) -> Decision | None:
        """Wait for the decision on a step (None after ``timeout``); wakes on the decision stream."""
        listener = self._listener()
        deadline = None if timeout is None else time.monotonic() + timeout
        with listener.watch(run_id, step) as woken:
            await listener.started()  # from here on, no decision can slip between the check and the read
            while True:
                decided = await self.decision(run_id, step)
                if decided is not None:
                    return decided
                expires = await self._expires_at(run_id, step)
                delays = [] if deadline is None else [deadline - time.monotonic()]
                if expires is not None:
                    delays.append(max(expires - time.time(), 0.0) + 0.001)
                try:
                    return _decision(await asyncio.wait_for(asyncio.shield(woken), min(delays, default=None)))
                except TimeoutError:
                    if deadline is not None and time.monotonic() >= deadline:
                        return None

    async def _expires_at(self, run_id: str, step: int) -> float | None:
        key = keys.approvals(self._prefix, run_id)
        expires = await self._conn.command("hget", key, f"e:{step}")
        return None if expires is None else float(expires)

    def _listener(self) -> DecisionListener:
        extras = self._conn.state().extras
        listener = extras.get("decisions")
        if listener is None:
            listener = extras["decisions"] = DecisionListener(self._conn, keys.decision_stream(self._prefix))
        return listener

    async def sweep(self, now: float | None = None, limit: int = 500) -> int:
        """Record the expiry outcome of every call that expired by ``now``; returns how many."""
        index = keys.approvals_expiring(self._prefix)
        cutoff = time.time() if now is None else now
        due = await self._conn.command("zrangebyscore", index, "-inf", cutoff, start=0, num=limit)
        expired = 0
        for member in due:
            step, run_id = member.split(":", 1)
            status, *_ = await self._decide(run_id, int(step), None, now)  # Redis's clock unless told
            expired += status == "expired"
            if status in ("none", "decided"):
                await self._conn.call("zrem", index, member)
        return expired

    async def clear(self, run_id: str) -> None:
        """Forget the run's approvals and take them off the fleet's indexes."""
        key, pending_index, expiring_index = self._keys(run_id)
        fields = await self._conn.command("hkeys", key)
        members = [keys.step_member(run_id, int(f[2:])) for f in fields if f.startswith("p:")]

        async def drop(c: Any) -> None:
            async with c.pipeline(transaction=False) as pipe:
                if members:
                    pipe.zrem(pending_index, *members)
                    pipe.zrem(expiring_index, *members)
                pipe.delete(key)
                await pipe.execute()

        await self._conn.run(drop)

    async def close(self) -> None:
        """Close this event loop's connections (its decision reader stops with them)."""
        await self._conn.close()
