"""Step claims in Redis: who executes a step that must run at most once (see ``Journal.claim``).

One script (``step_claim.lua``) claims, renews and releases, looking at the run's journal in the same
step, with leases judged by Redis's clock. The claims of a run are one hash under its hash tag.
"""

from __future__ import annotations

import asyncio
import contextlib

from castor.backends.redis import keys
from castor.backends.redis._client import RedisConnection
from castor.seams import DRIVE_STEP, StepClaim

# A claim's lease is judged by Redis's clock, which a restart does not stop: a live holder finds its lease
# run out when Redis comes back, until its next renewal.


def uptime_of(info: object) -> float:
    """``uptime_in_seconds`` of ``INFO server``, as redis-py parses it (a dict) or as the text Redis sends."""
    if isinstance(info, dict):
        return float(info["uptime_in_seconds"])
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("uptime_in_seconds:"):
            return float(line.split(":", 1)[1])
    raise ValueError("INFO server has no uptime_in_seconds")

CLAIMED = StepClaim("claimed")
JOURNALED = StepClaim("journaled")


class RedisClaims:
    """The claim half of ``RedisJournal``."""

    _conn: RedisConnection
    _prefix: str

    async def started_ago(self) -> float:
        """Seconds since the Redis server started (``INFO server`` uptime): a live holder's lease may have
        run out over a restart it has not renewed since (``castor.kernel.claims``)."""
        return uptime_of(await self._conn.command("info", "server"))

    async def _claim_script(self, op: str, run_id: str, step: int, *args: object) -> object:
        p = self._prefix
        script_keys = [keys.claims(p, run_id), keys.journal(p, run_id)]
        if step == DRIVE_STEP and op == "claim":  # a fleet coordinator's lease holds the drive too
            script_keys.append(keys.lease(p, run_id))
        return await self._conn.script("step_claim", script_keys, [op, step, *args])

    async def claim(
        self, run_id: str, step: int, attempt: int, holder: str, lease: float, *, replace: str = "",
        lapsed_only: bool = False,
    ) -> StepClaim:
        """Claim the step unless it is journaled or another holder has it (see ``Journal.claim``)."""
        reply: list[str] = await self._claim_script(  # type: ignore[assignment]
            "claim", run_id, step, attempt, holder, repr(float(lease)), replace, "1" if lapsed_only else "0"
        )
        state, *rest = reply
        if state == "claimed":
            if self._conn.replicas:
                await self._replicated(run_id, step, holder)
            return CLAIMED
        if state == "journaled":
            return JOURNALED
        owner, held_attempt, expired = rest
        return StepClaim("held", str(owner), int(held_attempt), str(expired) == "1")

    async def _replicated(self, run_id: str, step: int, holder: str) -> None:
        """With ``replicas=N``, a claim counts once N replicas have it: one a failover could lose would let the
        step (or the run's drive) be taken again while its holder runs it. Given back otherwise, unused."""
        what = f"the drive of run {run_id!r}" if step == DRIVE_STEP else f"the claim of run {run_id!r} step {step}"
        try:
            await self._conn.replicated(keys.replicated(self._prefix), what)
        except BaseException:
            with contextlib.suppress(Exception):  # the primary away too: the lease runs out by itself
                await asyncio.shield(self.release_claim(run_id, step, holder))
            raise

    async def renew_claim(self, run_id: str, step: int, holder: str, lease: float) -> bool:
        """Extend the holder's lease."""
        return bool(await self._claim_script("renew", run_id, step, 0, holder, repr(float(lease)), "", "0"))

    async def release_claim(self, run_id: str, step: int, holder: str) -> None:
        """Drop the holder's claim."""
        await self._claim_script("release", run_id, step, 0, holder, "0", "", "0")
