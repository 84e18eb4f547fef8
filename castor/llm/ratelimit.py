"""Model rate limits: requests and tokens per minute per (provider, model, API key), waited for, not failed.

A provider limits each API key per model: ``rpm`` requests and ``tpm`` tokens in any minute. A
``RateLimiter`` keeps a sliding window of the calls taken under each ``LimitKey`` (the key is named by a
short hash of the API key, never the key itself) and admits a call only while the window, with the
call's estimated tokens, stays within both limits:

- ``acquire(key, tokens, timeout=)`` reserves the estimate (prompt estimate + ``max_tokens``) or, when
  the window is full, waits its turn (the limiter says how long) until ``timeout``; past it, a
  ``RateLimitError`` names the limit. A call that could never fit (more tokens than the limit) fails at once.
- ``settle(reservation, tokens)`` corrects the reservation to the usage the provider reported.
- ``pause(key, seconds)`` stops every acquire of the key (a provider's 429 with ``retry-after``).

Refused callers take their turns in the order they came: in a process they wait in a line per key (one
of them asks the limiter at a time), and across processes the longest-refused caller still asking goes
first. ``MemoryRateLimiter`` (``castor.llm.memory_limits``) serves one process (the embedded kernel);
``RedisRateLimiter`` (``castor.llm.redis_limits``) shares the windows with every worker of the fleet, each
operation one script on the server's clock. ``limited()`` wraps any async provider call: acquire, call,
settle, and a pause of the key when the provider answers 429; ``call_limited()`` asks again after a 429.

Each window is ``window + skew`` seconds long: ``skew`` covers the time between an acquire and the
provider seeing the request, so the provider's own minute never holds more than the limit either.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from castor._ids import unique_ids
from castor.errors import BackendUnavailable, CastorError, ConfigError

__all__ = [
    "Limit", "LimitKey", "LimitTable", "ProviderRateLimited", "RateLimitError",
    "RateLimiter", "Reservation", "Slot", "call_limited", "key_id", "limited", "retry_after",
]

T = TypeVar("T")
log = logging.getLogger("castor.llm")

WINDOW = 60.0  # seconds: a provider's limits are per minute
POLL = 1.0  # a waiting caller asks again at least this often: settled calls may free the window sooner


class RateLimitError(CastorError, TimeoutError):
    """A model call found no turn under its rate limit before its deadline (or can never fit under it)."""


class ProviderRateLimited(CastorError):
    """The provider refused a call for its rate limit (HTTP 429); ``retry_after`` seconds it asked to wait."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def key_id(api_key: str | None) -> str:
    """A short, stable name for an API key (a hash: the key itself never leaves the worker's memory)."""
    if not api_key:
        return "nokey"
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class LimitKey:
    """What one rate limit applies to: a provider, a model, an API key (by its ``key_id``)."""

    provider: str
    model: str
    key: str = "nokey"

    @classmethod
    def of(cls, provider: str, model: str, api_key: str | None = None) -> LimitKey:
        """The limit key of calls to ``model`` at ``provider`` made with ``api_key``."""
        return cls(provider, model, key_id(api_key))

    @property
    def name(self) -> str:
        """``provider/model/key id``: how errors and Redis keys name it."""
        return f"{self.provider}/{self.model}/{self.key}"


@dataclass(frozen=True, slots=True)
class Limit:
    """Requests and tokens per minute; None: not limited."""

    rpm: int | None = None
    tpm: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"rate limit {name} must be a positive integer or None, not {value!r}")


class LimitTable:
    """The limits per model: ``"provider/model"`` first, then ``"provider/*"``, then ``"*"``; none: unlimited."""

    def __init__(self, limits: Mapping[str, Any] | None = None) -> None:
        """``limits``: name -> a ``Limit``, a mapping with ``rpm`` / ``tpm``, or ``[llm.limits]``'s sections."""
        self._limits: dict[str, Limit] = {}
        for name, limit in (limits or {}).items():
            if name != "*" and (name.count("/") != 1 or not all(name.split("/"))):
                raise ConfigError(f"rate limit name {name!r} must be 'provider/model', 'provider/*' or '*'")
            if isinstance(limit, Mapping):
                limit = Limit(limit.get("rpm"), limit.get("tpm"))
            elif not isinstance(limit, Limit):
                limit = Limit(limit.rpm, limit.tpm)  # a settings section (``castor.settings.ModelLimits``)
            self._limits[name] = limit

    def of(self, key: LimitKey) -> Limit:
        """The limit of ``key``'s provider and model."""
        for name in (f"{key.provider}/{key.model}", f"{key.provider}/*", "*"):
            if name in self._limits:
                return self._limits[name]
        return Limit()


@dataclass(slots=True)
class Reservation:
    """One admitted call: its ``tokens`` are in the window of ``key`` until it leaves it."""

    key: LimitKey
    id: str
    tokens: int
    waited: float = 0.0  # seconds the call waited for its turn


class RateLimiter(ABC):
    """Sliding windows of admitted calls per ``LimitKey``; ``acquire`` waits for a turn (see the module)."""

    def __init__(
        self, limits: LimitTable | Mapping[str, Any] | None = None, *,
        window: float = WINDOW, skew: float = 1.0, poll: float = POLL,
    ) -> None:
        if window <= 0 or skew < 0 or poll <= 0:
            raise ConfigError(f"rate limiter needs window > 0, skew >= 0, poll > 0 (got {window}, {skew}, {poll})")
        self.limits = limits if isinstance(limits, LimitTable) else LimitTable(limits)
        self.window = window + skew
        self.poll = poll
        self._ids = unique_ids(compact=True)
        self._lines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[LimitKey, asyncio.Lock]] = (
            weakref.WeakKeyDictionary()
        )

    async def acquire(self, key: LimitKey, tokens: int, *, timeout: float | None = None) -> Reservation:
        """Reserve ``tokens`` (an estimate, settled later) under ``key``'s limits, waiting up to ``timeout``
        seconds (None: as long as it takes) for a turn; ``RateLimitError`` naming the limit past it.

        A refused caller waits in this process's line for the key: its callers take their turns in the
        order they came, one of them asking at a time (a newcomer does not jump the line)."""
        tokens = _tokens(tokens)
        attempt = _Attempt(key, self.limits.of(key), self._ids(), tokens)
        try:
            return await self._turn(attempt, timeout)
        except BaseException:
            if attempt.since:  # refused before: it may be first in the fleet's line, which it leaves now
                with contextlib.suppress(Exception):
                    await self._leave(key, attempt.rid)
            raise

    async def _turn(self, a: _Attempt, timeout: float | None) -> Reservation:
        started = time.monotonic()
        line = self._line(a.key)
        if not line.locked():
            taken, wait, a.reason, a.since = await self._take(a.key, a.limit, a.rid, a.tokens, a.since)
            if taken:
                return Reservation(a.key, a.rid, a.tokens, 0.0)
            _check_fits(wait, a)
        loop = asyncio.get_running_loop()
        deadline = asyncio.timeout_at(None if timeout is None else loop.time() + timeout)
        try:
            async with deadline, line:
                while True:
                    taken, wait, a.reason, a.since = await self._take(a.key, a.limit, a.rid, a.tokens, a.since)
                    if taken:
                        return Reservation(a.key, a.rid, a.tokens, time.monotonic() - started)
                    _check_fits(wait, a)
                    # A little jitter: callers refused together do not all come back in the same millisecond.
                    await asyncio.sleep(min(wait * (1 + 0.05 * random.random()), self.poll))
        except TimeoutError:
            if not deadline.expired():
                raise
            raise RateLimitError(
                f"no turn under the rate limit of {a.key.name} within {timeout:.3g}s: {_explain(a.reason, a.limit)}"
            ) from None

    def _line(self, key: LimitKey) -> asyncio.Lock:
        """This event loop's line of callers waiting for ``key`` (a lock belongs to one loop)."""
        lines = self._lines.setdefault(asyncio.get_running_loop(), {})
        line = lines.get(key)
        if line is None:
            line = lines[key] = asyncio.Lock()
        return line

    @abstractmethod
    async def _take(
        self, key: LimitKey, limit: Limit, rid: str, tokens: int, since: int
    ) -> tuple[bool, float, str, int]:
        """Admit the call now: ``(True, 0, "", since)``, else ``(False, seconds to wait, "rpm" | "tpm" |
        "paused" | "line", since)`` (``-1`` seconds: it never fits). ``since``: when the call was first
        refused, as the limiter's clock says (0: not yet); its place in a line across processes."""

    @abstractmethod
    async def _leave(self, key: LimitKey, rid: str) -> None:
        """A caller that was refused gives up: it leaves the line of ``key``."""

    @abstractmethod
    async def settle(self, reservation: Reservation, tokens: int) -> None:
        """Count what the call really used (the provider's usage) instead of its estimate."""

    @abstractmethod
    async def pause(self, key: LimitKey, seconds: float) -> None:
        """Admit no call under ``key`` for ``seconds`` (a shorter pause never cuts a longer one)."""


MAX_PAUSE = 24 * 3600.0  # the longest pause a provider's Retry-After gets (a day)
MAX_TOKENS = 10**12  # more than any model call reserves: sums of them stay exact integers in Redis's Lua


def _tokens(tokens: int) -> int:
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ConfigError(f"tokens to reserve must be a non-negative integer, not {tokens!r}")
    # Redis's Lua formats numbers from 1e17 up as "1e+17", which its integer commands refuse (half-written).
    return min(tokens, MAX_TOKENS)


@dataclass(slots=True)
class _Attempt:
    """One acquire: what it asks for, why it was last refused, and since when (its place in the line)."""

    key: LimitKey
    limit: Limit
    rid: str
    tokens: int
    reason: str = "line"
    since: int = 0


def _check_fits(wait: float, a: _Attempt) -> None:
    if wait < 0:
        raise RateLimitError(
            f"a call of {a.tokens} tokens can never fit the limit of {a.key.name}: {a.limit.tpm} tokens per minute"
        )


def _explain(reason: str, limit: Limit) -> str:
    if reason == "line":
        return "callers that came first still wait for their turns"
    if reason == "paused":
        return "the provider asked to wait (429 retry-after)"
    if reason == "rpm":
        return f"{limit.rpm} requests per minute"
    return f"{limit.tpm} tokens per minute"


# --- around a provider call -----------------------------------------------------------------------


@dataclass(slots=True)
class Slot:
    """A call's turn inside ``limited()``: tell it the usage the provider reported with ``used(tokens)``."""

    reservation: Reservation
    usage: int | None = None

    def used(self, tokens: int) -> None:
        """The tokens the provider reported for the call (settled when the block ends)."""
        self.usage = _tokens(tokens)


def retry_after(exc: BaseException) -> float | None:
    """The seconds a provider's rate-limit refusal asks to wait: a ``ProviderRateLimited``, or any error with
    ``status_code`` 429 (an SDK's) and a ``retry_after`` attribute or ``retry-after`` header; else None."""
    if not isinstance(exc, ProviderRateLimited) and getattr(exc, "status_code", None) != 429:
        return None
    seconds = getattr(exc, "retry_after", None)
    if seconds is None:
        headers = getattr(getattr(exc, "response", None), "headers", None) or {}
        with contextlib.suppress(TypeError, ValueError):
            seconds = float(headers.get("retry-after"))  # type: ignore[arg-type]  # None: suppressed
    with contextlib.suppress(TypeError, ValueError):
        seconds = float(seconds) if seconds is not None else None
        # A remote server chose it: a pause of no finite length, or of years, is no pause to keep.
        if seconds is not None and math.isfinite(seconds):
            return min(max(seconds, 0.0), MAX_PAUSE)
    return 1.0  # a 429 without a (usable) hint: a second


@contextlib.asynccontextmanager
async def limited(
    limiter: RateLimiter, key: LimitKey, tokens: int, *, timeout: float | None = None
) -> AsyncIterator[Slot]:
    """Run a provider call in the block once ``key``'s limits give it a turn (``acquire``); then settle the
    reservation to the usage given to ``slot.used()``. A 429 raised from the block pauses ``key`` for every
    process sharing ``limiter`` for its ``retry-after``, then goes up (the caller decides to try again)::

        async with limited(limiter, key, tokens=estimate + max_tokens, timeout=30) as slot:
            response = await provider.complete(request)
            slot.used(response.usage.total_tokens)
    """
    slot = Slot(await limiter.acquire(key, tokens, timeout=timeout))
    try:
        yield slot
    except BaseException as exc:
        wait = retry_after(exc)
        if wait is not None:
            await limiter.pause(key, wait)
            slot.usage = 0 if slot.usage is None else slot.usage  # refused: it used no tokens
        raise
    finally:
        if slot.usage is not None:
            try:
                await limiter.settle(slot.reservation, slot.usage)
            except BackendUnavailable as exc:
                # Bookkeeping only: the call's outcome (a paid answer) must not be lost to it. The estimate stays
                # counted until it leaves the window, on the safe side of the limit.
                log.warning("rate limit %s: the call's usage was not settled (%s); its estimate stays counted",
                            key.name, exc)


async def call_limited(
    limiter: RateLimiter, key: LimitKey, tokens: int, call: Callable[[], Awaitable[T]], *,
    usage: Callable[[T], int], timeout: float | None = None,
) -> T:
    """``await call()`` inside ``limited()``, and again after each 429 (the key paused meanwhile for every
    process) until ``timeout``; ``usage(result)``: the tokens the provider reported. A result without usage
    (``usage`` raises) keeps the estimate counted."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            async with limited(limiter, key, tokens, timeout=left) as slot:
                result = await call()
                slot.used(usage(result))
                return result
        except Exception as exc:
            if retry_after(exc) is None:
                raise
            # paused by limited(): the next acquire waits the pause out, within the deadline
