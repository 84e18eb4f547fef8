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
    assert holder is not None and holder.split("\0")[0] == "host:1"
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


async def test_a_free_call_of_a_fenced_run_still_checks_the_fence(
    backend: Backend, redis_url: str, redis_prefix: str, round_trips: RoundTrips
) -> None:
    b = backend.budgets
    lease = keys.lease(redis_prefix, "r")
    sync = redis.Redis.from_url(redis_url)
    sync.set(lease, "mine")
    await b.open_run("r", {"api": 5}, {})
    round_trips.reset()
    assert (await b.charge("r", 0, {})).ok  # unfenced: nothing to check, no round trip
    assert round_trips.sends == 0
    assert (await b.charge("r", 0, {}, fence=Fence(lease, "mine"))).ok  # type: ignore[call-arg]
    assert round_trips.sends == 1  # fenced: one script call, even for nothing
    sync.set(lease, "theirs")
    with pytest.raises(StaleLeaseError, match="theirs"):
        await b.charge("r", 1, {}, fence=Fence(lease, "mine"))  # type: ignore[call-arg]
    b.fences["r"] = Fence(lease, "mine")  # type: ignore[attr-defined]  # the table the coordinator fills
    with pytest.raises(StaleLeaseError):
        await b.charge("r", 1, {})
    assert not sync.hlen(keys.charges(redis_prefix, "r"))  # a free call leaves no charge record
    sync.close()
    assert await b.remaining("r", "api") == 5.0


async def test_float_costs_add_up_exactly_enough(backend: Backend) -> None:
    b = backend.budgets
    await b.open_run("r", {"usd": 0.3}, {})
    for step in range(3):
        assert (await b.charge("r", step, {"usd": 0.1})).ok
    assert not (await b.charge("r", 3, {"usd": 0.1})).ok


async def test_the_index_holds_runs_and_a_journal_write_settles_its_charge(
    redis_url: str, redis_prefix: str
) -> None:
    from castor.checkpoint import SyscallRecord

    long = redis_backend(redis_url, prefix=redis_prefix, reservation_seconds=3600, holder="host:1")
    short = redis_backend(redis_url, prefix=redis_prefix, reservation_seconds=0.05, holder="host:2")
    await long.budgets.set_scope("s", {"api": 100})
    sync = redis.Redis.from_url(redis_url, decode_responses=True)
    index, charges = keys.reservations(redis_prefix), keys.charges(redis_prefix, "r")
    for step in range(3):
        await long.budgets.charge("r", step, {"api": 1}, ["s"])
    assert sync.zrange(index, 0, -1) == ["r"]  # one entry per run, however many charges
    await long.journal.append("r", 0, SyscallRecord(request={}, response=0))
    assert sorted(sync.hkeys(charges)) == ["1", "2"]  # journaled: spent, nothing left to sweep
    await short.budgets.charge("r", 3, {"api": 5}, ["s"])  # a holder with a shorter claim: scored earlier
    claimed_until = sync.zscore(index, "r")
    assert claimed_until is not None and claimed_until < time.time() + 60
    time.sleep(0.06)
    assert await long.budgets.sweep() == 1  # step 3's holder is gone; steps 1 and 2 are still claimed
    assert await long.budgets.read_scope("s") == {"api": (100.0, 3.0)}
    claimed_until = sync.zscore(index, "r")
    assert claimed_until is not None and claimed_until > time.time() + 3000  # due again with steps 1, 2
    await long.budgets.refund("r", 1)
    await long.budgets.refund("r", 2)
    assert await long.budgets.sweep(now=time.time() + 7200) == 0
    assert sync.zcard(index) == 0 and sync.hlen(charges) == 0
    await long.budgets.charge("r", 4, {"api": 1}, ["s"])  # taken off the index, it comes back on
    assert sync.zrange(index, 0, -1) == ["r"]
    sync.close()
    await long.close()
    await short.close()


async def test_negative_charges_are_refunded_exactly(backend: Backend) -> None:
    b = backend.budgets
    await b.open_run("r", {"usd": 1.0}, {"usd": 0.7})
    assert (await b.charge("r", 0, {"usd": -0.1})).ok  # a child's unused budget given back on join
    assert await b.remaining("r", "usd") == pytest.approx(0.4)
    await b.refund("r", 0)
    assert await b.remaining("r", "usd") == pytest.approx(0.3)


async def test_names_holding_nul_are_refused(backend: Backend) -> None:
    from castor import ConfigError

    with pytest.raises(ConfigError):
        await backend.budgets.charge("r", 0, {"a\0b": 1})
    with pytest.raises(ConfigError):
        await backend.budgets.charge("r", 0, {"api": 1}, ["team\0x"])


async def test_a_charge_that_took_nothing_is_swept_without_counting(redis_url: str, redis_prefix: str) -> None:
    dead = redis_backend(redis_url, prefix=redis_prefix, reservation_seconds=0.01, holder="host:1")
    await dead.budgets.charge("r", 0, {"free": 1})  # no ledger limits "free"
    time.sleep(0.02)
    assert await dead.budgets.sweep() == 0
    sync = redis.Redis.from_url(redis_url)
    assert sync.hlen(keys.charges(redis_prefix, "r")) == 0 and sync.zcard(keys.reservations(redis_prefix)) == 0
    sync.close()
    await dead.close()


async def test_a_refund_never_reaches_a_scope_deleted_and_made_again_nor_goes_below_zero(backend: Backend) -> None:
    """A scope deleted and set again restarted its period count, so a refund of a charge taken before the
    delete gave back into the new scope (15 taken against a limit of 10). And refunds of decimals could leave
    a rounding's dust below zero (HINCRBYFLOAT's long doubles against the check's doubles)."""
    budgets = backend.budgets
    await budgets.set_scope("dr", {"api": 10})
    assert (await budgets.charge("dr1", 1, {"api": 5.0}, ["dr"])).ok
    await budgets.delete_scope("dr")  # type: ignore[attr-defined]
    await budgets.set_scope("dr", {"api": 10})
    assert (await budgets.charge("dr2", 1, {"api": 8.0}, ["dr"])).ok
    await budgets.refund("dr1", 1)  # taken from the deleted scope: nothing comes back here
    assert await budgets.read_scope("dr") == {"api": (10.0, 8.0)}
    assert not (await budgets.charge("dr3", 1, {"api": 7.0}, ["dr"])).ok
    await budgets.set_scope("dust", {"api": 100})
    amounts = [1.50065, 2.524255, 1.980063, 0.657, 0.73, 1.44, 0.1, 0.2, 1e-10]
    for step, amount in enumerate(amounts):
        assert (await budgets.charge("dust-run", step, {"api": amount}, ["dust"])).ok
    for step in (3, 8, 0, 6, 5, 1, 7, 4, 2):
        await budgets.refund("dust-run", step)
    assert (await budgets.read_scope("dust"))["api"][1] >= 0.0
