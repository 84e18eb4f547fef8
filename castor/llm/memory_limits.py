"""``MemoryRateLimiter``: the model rate limits of ``castor.llm.ratelimit`` in one process (the embedded kernel).

The same sliding windows as the fleet's ``RedisRateLimiter``, in this process's memory and on its monotonic
clock; its callers' line is ``RateLimiter.acquire``'s, so nothing here keeps one.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any

from castor.llm.ratelimit import Limit, LimitKey, LimitTable, RateLimiter, Reservation, _tokens

__all__ = ["MemoryRateLimiter"]


@dataclass(slots=True)
class _Window:
    calls: collections.deque[tuple[float, str]] = field(default_factory=collections.deque)  # (taken, id)
    tokens: dict[str, int] = field(default_factory=dict)  # id -> tokens, while in the window
    total: int = 0
    paused_until: float = 0.0


class MemoryRateLimiter(RateLimiter):
    """The windows in this process's memory, on its monotonic clock (the embedded kernel)."""

    def __init__(self, *args: Any, clock: Any = time.monotonic, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = clock
        self._windows: dict[LimitKey, _Window] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> MemoryRateLimiter:
        """The limiter of ``castor.toml``'s ``[llm]`` (``limits``, ``skew``) for one process."""
        return cls(LimitTable(settings.llm.limits), skew=settings.llm.skew)

    async def _take(
        self, key: LimitKey, limit: Limit, rid: str, tokens: int, since: int
    ) -> tuple[bool, float, str, int]:
        # one process: the line of ``acquire`` is the whole line, ``since`` is not needed
        taken, wait, reason = self._admit(key, limit, rid, tokens)
        return taken, wait, reason, since

    async def _leave(self, key: LimitKey, rid: str) -> None:
        pass  # one process: its line is ``acquire``'s lock, which a caller that gives up has left

    def _admit(self, key: LimitKey, limit: Limit, rid: str, tokens: int) -> tuple[bool, float, str]:
        now = self._clock()
        w = self._windows.setdefault(key, _Window())
        if w.paused_until > now:
            return False, w.paused_until - now, "paused"
        if limit.tpm is not None and tokens > limit.tpm:
            return False, -1.0, "tpm"
        while w.calls and w.calls[0][0] <= now - self.window:
            _, gone = w.calls.popleft()
            w.total -= w.tokens.pop(gone, 0)
        wait, reason = 0.0, ""
        if limit.rpm is not None and len(w.calls) >= limit.rpm:
            wait, reason = w.calls[len(w.calls) - limit.rpm][0] + self.window - now, "rpm"
        if limit.tpm is not None and w.total + tokens > limit.tpm:
            need, freed = w.total + tokens - limit.tpm, 0
            for at, call in w.calls:  # oldest first, until enough leaves the window
                freed += w.tokens.get(call, 0)
                if freed >= need:
                    if at + self.window - now > wait:
                        wait, reason = at + self.window - now, "tpm"
                    break
        if wait > 0:
            return False, wait, reason
        w.calls.append((now, rid))
        w.tokens[rid] = tokens
        w.total += tokens
        return True, 0.0, ""

    async def settle(self, reservation: Reservation, tokens: int) -> None:
        """Count the reported ``tokens`` in place of the estimate (nothing once the call left the window)."""
        w = self._windows.get(reservation.key)
        tokens = _tokens(tokens)
        if w is not None and reservation.id in w.tokens:
            w.total += tokens - w.tokens[reservation.id]
            w.tokens[reservation.id] = tokens

    async def pause(self, key: LimitKey, seconds: float) -> None:
        """No call under ``key`` for ``seconds``."""
        w = self._windows.setdefault(key, _Window())
        w.paused_until = max(w.paused_until, self._clock() + seconds)
