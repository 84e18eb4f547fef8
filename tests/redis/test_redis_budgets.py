"""RedisBudgetStore: all-or-nothing charges over run and scopes, idempotent refunds, reservation sweeps."""

from __future__ import annotations

import math
import time

import pytest
import redis

from castor import StaleLeaseError
from castor.backends.redis import Fence, RedisBudgetStore, keys, redis_backend
from castor.seams import Backend, Charge
from tests.redis_support import RoundTrips


async def test_charge_draws_from_run_and_scopes_all_or_nothing(backend: Backend, round_trips: RoundTrips) -> None:
    b = backend.budgets
    await b.open_run("r", {"api": 10}, {"api": 2})
    await b.set_scope("team", {"api": 5, "usd": 1.0})
    round_trips.reset()
    assert await b.charge("r", 0, {"api": 4, "usd": 0.5}, ["team"]) == Charge(True)
    assert round_trips.sends == 1  # one script, one round trip
    assert await b.read_scope("team") == {"api": (5.0, 4.0), "usd": (1.0, 0.5)}
    refused = await b.charge("r", 1, {"api": 2}, ["team"])
    assert refused == Charge(False, "team:api", 1.0)
    assert await b.read_scope("team") == {"api": (5.0, 4.0), "usd": (1.0, 0.5)}  # nothing taken anywhere
    assert await b.remaining("r", "api") == 4.0
    assert await b.remaining("r", "api", ["team"]) == 1.0
    assert await b.remaining("r", "other", ["team"]) == math.inf
    assert (await b.charge("r", 2, {"api": 5})) == Charge(False, "api", 4.0)  # the run's own ledger


async def test_a_step_is_charged_once_and_refunded_once(backend: Backend) -> None:
    b = backend.budgets
    await b.open_run("r", {"api": 10}, {})
    await b.set_scope("s", {"api": 100})
    assert (await b.charge("r", 0, {"api": 3}, ["s"])).ok
    assert (await b.charge("r", 0, {"api": 3}, ["s"])).ok  # the same step again: a no-op
    assert await b.remaining("r", "api") == 7.0
    await b.refund("r", 0)
    await b.refund("r", 0)
    assert await b.remaining("r", "api") == 10.0
    assert await b.read_scope("s") == {"api": (100.0, 0.0)}


async def test_can_afford_does_not_charge(backend: Backend) -> None:
    b = backend.budgets
    await b.open_run("r", {"api": 1}, {})
    assert (await b.can_afford("r", {"api": 1})).ok
    assert not (await b.can_afford("r", {"api": 2})).ok
    assert await b.remaining("r", "api") == 1.0


async def test_refund_after_a_scope_reset_never_goes_negative(backend: Backend) -> None:
    b = backend.budgets
    await b.set_scope("s", {"api": 10})
    await b.charge("r", 0, {"api": 4}, ["s"])
    await b.reset_scope("s")
    await b.refund("r", 0)
    assert await b.read_scope("s") == {"api": (10.0, 0.0)}


async def test_scope_admin(backend: Backend) -> None:
    b = backend.budgets
    assert await b.read_scope("none") == {}
    await b.set_scope("s", {"api": 10})
    await b.charge("r", 0, {"api": 6}, ["s"])
    await b.top_up("s", {"api": 5, "usd": 2})
    assert await b.read_scope("s") == {"api": (15.0, 6.0), "usd": (2.0, 0.0)}
    await b.set_scope("s", {"api": 8})  # new limit, usage kept
    assert await b.read_scope("s") == {"api": (8.0, 6.0), "usd": (2.0, 0.0)}
    assert await b.scopes() == ["s"]  # type: ignore[attr-defined]
    await b.reset_scope("s")
    assert await b.read_scope("s") == {"api": (8.0, 0.0), "usd": (2.0, 0.0)}
    await b.delete_scope("s")  # type: ignore[attr-defined]
    assert await b.read_scope("s") == {} and await b.scopes() == []  # type: ignore[attr-defined]


async def test_sweep_refunds_a_dead_holders_reservation_but_not_a_journaled_step(
    redis_url: str, redis_prefix: str
) -> None:
    from castor.checkpoint import SyscallRecord

    dead = redis_backend(redis_url, prefix=redis_prefix, reservation_seconds=0.05, holder="host:1")
    b = dead.budgets
    assert isinstance(b, RedisBudgetStore)
    await b.set_scope("s", {"api": 10})
    await b.charge("r", 0, {"api": 2}, ["s"])  # journaled: spent
    await dead.journal.append("r", 0, SyscallRecord(request={}, response=1, charged={"api": 2}))
    await b.charge("r", 1, {"api": 3}, ["s"])  # the holder died before journaling it
    sync = redis.Redis.from_url(redis_url, decode_responses=True)
    holder = sync.hget(keys.charges(redis_prefix, "r"), "1")
    assert holder is not None and '"h":"host:1"' in holder
    assert await b.sweep(now=time.time() - 10) == 0  # claims still running: nothing happens
    assert await b.read_scope("s") == {"api": (10.0, 5.0)}
    time.sleep(0.06)
    assert await b.sweep() == 1
    assert await b.read_scope("s") == {"api": (10.0, 2.0)}
    assert sync.zcard(keys.reservations(redis_prefix)) == 0  # nothing leaked in the index
    assert await b.sweep() == 0
    sync.close()
    await dead.close()


async def test_close_run_drops_ledger_and_reservations(backend: Backend, redis_url: str, redis_prefix: str) -> None:
    b = backend.budgets
    await b.open_run("r", {"api": 5}, {})
    await b.charge("r", 0, {"api": 1})
    await b.close_run("r")
    sync = redis.Redis.from_url(redis_url)
    assert sync.exists(keys.ledger(redis_prefix, "r"), keys.charges(redis_prefix, "r")) == 0
    assert sync.zcard(keys.reservations(redis_prefix)) == 0
    sync.close()
    await b.refund("r", 0)  # nothing left to refund, and no ledger is brought back
    assert await b.remaining("r", "api") == math.inf


async def test_charge_fence(backend: Backend, redis_url: str, redis_prefix: str) -> None:
    b = backend.budgets
    lease = keys.lease(redis_prefix, "r")
    sync = redis.Redis.from_url(redis_url)
    sync.set(lease, "mine")
    await b.open_run("r", {"api": 5}, {})
    assert (await b.charge("r", 0, {"api": 1}, fence=Fence(lease, "mine"))).ok  # type: ignore[call-arg]
    sync.set(lease, "theirs")
    with pytest.raises(StaleLeaseError):
        await b.charge("r", 1, {"api": 1}, fence=Fence(lease, "mine"))  # type: ignore[call-arg]
    sync.close()
    assert await b.remaining("r", "api") == 4.0


async def test_a_charge_of_nothing_is_free_unless_fenced(
    backend: Backend, redis_url: str, redis_prefix: str, round_trips: RoundTrips
) -> None:
    b = backend.budgets
    lease = keys.lease(redis_prefix, "r")
    sync = redis.Redis.from_url(redis_url)
    sync.set(lease, "mine")
    await b.open_run("r", {}, {})
    round_trips.reset()
    assert (await b.charge("r", 0, {})).ok
    assert round_trips.sends == 0  # untracked cost, no fence: the store is not even asked
    assert (await b.charge("r", 1, {}, fence=Fence(lease, "mine"))).ok  # type: ignore[call-arg]
    assert round_trips.sends == 1  # the fence is checked in Redis
    sync.set(lease, "theirs")
    with pytest.raises(StaleLeaseError):  # a coordinator that lost the run dispatches nothing, even free calls
        await b.charge("r", 2, {}, fence=Fence(lease, "mine"))  # type: ignore[call-arg]
    assert sync.hlen(keys.charges(redis_prefix, "r")) == 0  # nothing taken, nothing recorded
    sync.close()


async def test_float_costs_add_up_exactly_enough(backend: Backend) -> None:
    b = backend.budgets
    await b.open_run("r", {"usd": 0.3}, {})
    for step in range(3):
        assert (await b.charge("r", step, {"usd": 0.1})).ok
    assert not (await b.charge("r", 3, {"usd": 0.1})).ok
