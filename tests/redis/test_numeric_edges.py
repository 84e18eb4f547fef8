"""Numbers at the edges reach Redis's scripts only in forms they take: a NaN, infinite or negative cost, a
store option or a provider's Retry-After of no finite size, and a token count past what Redis's Lua
formats as an integer were each accepted, and each left a script refusing its command half-way through
(a shared scope's usage NaN or negative, a rate-limit window jammed, a finished run never expiring)."""

from __future__ import annotations

import asyncio
import math

import pytest

from castor import Castor, castor_tool
from castor.backends import open_backend
from castor.errors import ConfigError
from castor.llm.ratelimit import MAX_PAUSE, MAX_TOKENS, Limit, LimitKey, ProviderRateLimited, retry_after
from castor.llm.redis_limits import RedisRateLimiter


async def search(query: str) -> str:
    return query


@pytest.mark.parametrize("cost", [math.nan, -1.0, math.inf])
def test_a_cost_of_no_finite_size_or_below_zero_is_refused_at_registration(cost: float) -> None:
    with pytest.raises(ConfigError, match="must be a finite number, not negative"):
        Castor(tools=[search], costs={"search": cost})
    with pytest.raises(ConfigError, match="cost_per_use must be a finite number"):
        castor_tool(cost_per_use=cost)(search)


@pytest.mark.parametrize("option", ["retention_seconds=nan", "retention_seconds=1e17", "retention_seconds=0.5",
                                    "approval_ttl=nan", "reservation_seconds=inf"])
def test_store_options_of_no_finite_size_are_refused(option: str) -> None:
    with pytest.raises(ConfigError, match=option.partition("=")[0]):
        open_backend(f"redis://127.0.0.1:1/0?prefix=edges&{option}")


@pytest.mark.parametrize(("option", "said"), [("replicas=1.5", "must be a whole number"),
                                              ("replica_timeout=soon", "must be a number"),
                                              ("replicas=-1", "must be a finite number, not negative")])
def test_a_store_option_that_is_no_number_of_its_kind_says_which_kind(option: str, said: str) -> None:
    """``replicas=1.5`` was told it "must be a number"."""
    with pytest.raises(ConfigError, match=f"{option.partition('=')[0]}.* {said}"):
        open_backend(f"redis://127.0.0.1:1/0?prefix=edges&{option}")


@pytest.mark.parametrize(("given", "kept"), [(math.inf, 1.0), (math.nan, 1.0), (1e300, MAX_PAUSE), (-5.0, 0.0),
                                             (3.5, 3.5)])
def test_a_providers_retry_after_is_kept_finite(given: float, kept: float) -> None:
    refused = ProviderRateLimited("slow down")
    refused.retry_after = given
    assert retry_after(refused) == kept


async def test_a_huge_token_count_leaves_the_rate_limit_window_working(redis_url: str, redis_prefix: str) -> None:
    """10**17 tokens reached the window's script as "1e+17": HINCRBY refused it after the reservation was
    written, and every acquire of the key failed once it left the window."""
    limiter = RedisRateLimiter(redis_url, redis_prefix, {"openai/gpt-test": Limit(rpm=100)}, window=0.3, skew=0)
    key = LimitKey.of("openai", "gpt-test", "sk-edges")
    try:
        await limiter.acquire(key, 7)
        huge = await limiter.acquire(key, 10**17)
        assert huge.tokens == MAX_TOKENS
        await limiter.settle(huge, 10**18)
        await asyncio.sleep(0.5)  # both leave the window at the next acquire
        assert (await limiter.acquire(key, 5, timeout=0)).waited < 0.1
    finally:
        await limiter.close()
