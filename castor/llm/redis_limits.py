"""``RedisRateLimiter``: the model rate limits of ``castor.llm.ratelimit`` shared by every process of a fleet.

Each ``LimitKey`` has three keys (``keys.llm_limit``): the window of admitted calls, their tokens, and the
pause a provider's 429 set. One script (``lua/llm_ratelimit.lua``) does each operation in one round trip
on the server's clock (``TIME``), so workers on machines whose clocks disagree still share one minute:
an acquire drops what left the window, checks the pause and both limits, and admits the call or says how
long to wait; a settle corrects one reservation; a pause sets the key's pause unless a longer one runs.

A lost connection is retried once (``RedisConnection``'s policy): an acquire that ran twice holds its
tokens twice for a minute, which errs on the safe side of the limit.
"""

from __future__ import annotations

from typing import Any

from castor.backends.redis import keys
from castor.backends.redis._client import RedisConnection
from castor.llm.ratelimit import Limit, LimitKey, LimitTable, RateLimiter, Reservation, _tokens

__all__ = ["RedisRateLimiter"]


class RedisRateLimiter(RateLimiter):
    """Rate limits in the Redis at ``redis`` (a URL or a ``RedisConnection``), keys under ``prefix``."""

    def __init__(self, redis: str | RedisConnection, prefix: str = "castor", *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._conn = redis if isinstance(redis, RedisConnection) else RedisConnection(redis)
        self._prefix = prefix
        self._window_ms = int(self.window * 1000)
        # how long the first caller in line keeps its place without asking again (it asks every ``poll`` at most)
        self._hold_ms = int((2 * self.poll + 1) * 1000)
        self._keys: dict[LimitKey, list[str]] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> RedisRateLimiter:
        """The fleet's limiter: ``castor.toml``'s ``[redis]`` and ``[llm]`` (``limits``, ``skew``)."""
        return cls(settings.redis.url, settings.redis.prefix, LimitTable(settings.llm.limits), skew=settings.llm.skew)

    def _keys_of(self, key: LimitKey) -> list[str]:
        names = self._keys.get(key)
        if names is None:
            names = self._keys[key] = keys.llm_limit(self._prefix, key.name)
        return names

    async def _take(
        self, key: LimitKey, limit: Limit, rid: str, tokens: int, since: int
    ) -> tuple[bool, float, str, int]:
        reply = await self._conn.script(
            "llm_ratelimit", self._keys_of(key),
            ("acquire", rid, tokens, limit.rpm or 0, limit.tpm or 0, self._window_ms, since, self._hold_ms),
        )
        if int(reply[0]) == 1:
            return True, 0.0, "", since
        wait = int(reply[1])
        return False, (-1.0 if wait < 0 else wait / 1000), str(reply[2]), int(reply[3])

    async def _leave(self, key: LimitKey, rid: str) -> None:
        await self._conn.script("llm_ratelimit", self._keys_of(key), ("leave", rid))

    async def settle(self, reservation: Reservation, tokens: int) -> None:
        """Count the reported ``tokens`` in place of the estimate (nothing once the call left the window)."""
        await self._conn.script(
            "llm_ratelimit", self._keys_of(reservation.key), ("settle", reservation.id, _tokens(tokens))
        )

    async def pause(self, key: LimitKey, seconds: float) -> None:
        """No call under ``key`` for ``seconds``, in every process (a shorter pause never cuts a longer one)."""
        await self._conn.script("llm_ratelimit", self._keys_of(key), ("pause", max(1, int(seconds * 1000))))

    async def close(self) -> None:
        """Close this event loop's connection."""
        await self._conn.close()
