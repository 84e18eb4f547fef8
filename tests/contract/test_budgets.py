"""BudgetStore contract: atomic, all-or-nothing, idempotent charges over runs and shared scopes."""

from __future__ import annotations

import math

import pytest

from castor.seams import Backend


async def test_charge_within_and_beyond_the_limit(backend: Backend) -> None:
    b = backend.budgets
    await b.open_run("r", {"api": 2}, {})
    assert (await b.charge("r", 0, {"api": 1})).ok
    assert (await b.charge("r", 1, {"api": 1})).ok
    denied = await b.charge("r", 2, {"api": 1})
    assert not denied.ok and denied.short == "api" and denied.remaining == 0
    assert await b.remaining("r", "api") == 0


async def test_all_or_nothing(backend: Backend) -> None:
    b = backend.budgets
    await b.open_run("r", {"api": 5, "disk": 1}, {"disk": 1})
    denied = await b.charge("r", 0, {"api": 1, "disk": 1})
    assert not denied.ok and denied.short == "disk"
    assert await b.remaining("r", "api") == 5  # nothing was taken


async def test_charging_a_step_twice_charges_once(backend: Backend) -> None:
    b = backend.budgets
    await b.open_run("r", {"api": 10}, {})
    assert (await b.charge("r", 0, {"api": 3})).ok
    assert (await b.charge("r", 0, {"api": 3})).ok
    assert await b.remaining("r", "api") == 7


async def test_refund_is_idempotent(backend: Backend) -> None:
    b = backend.budgets
    await b.open_run("r", {"api": 10}, {"api": 4})
    await b.charge("r", 0, {"api": 3})
    await b.refund("r", 0)
    await b.refund("r", 0)
    assert await b.remaining("r", "api") == 6
    await b.refund("r", 99)  # never charged: nothing happens
    assert await b.remaining("r", "api") == 6


async def test_untracked_resources_are_unlimited(backend: Backend) -> None:
    b = backend.budgets
    await b.open_run("r", {"api": 1}, {})
    assert (await b.charge("r", 0, {"gpu": 1e9})).ok
    assert math.isinf(await b.remaining("r", "gpu"))


async def test_can_afford_does_not_charge(backend: Backend) -> None:
    b = backend.budgets
    await b.open_run("r", {"api": 1}, {})
    assert (await b.can_afford("r", {"api": 1})).ok
    assert not (await b.can_afford("r", {"api": 2})).ok
    assert await b.remaining("r", "api") == 1


async def test_scopes_are_drawn_with_the_run(backend: Backend) -> None:
    b = backend.budgets
    await b.set_scope("team", {"api": 3})
    await b.open_run("r1", {"api": 10}, {})
    await b.open_run("r2", {"api": 10}, {})
    assert (await b.charge("r1", 0, {"api": 2}, ["team"])).ok
    denied = await b.charge("r2", 0, {"api": 2}, ["team"])
    assert not denied.ok and denied.short == "team:api"
    assert await b.remaining("r2", "api") == 10  # all or nothing: the run kept its budget
    assert (await b.charge("r2", 1, {"api": 1}, ["team"])).ok
    assert await b.read_scope("team") == {"api": (3.0, 3.0)}
    assert await b.remaining("r1", "api", ["team"]) == 0
    await b.refund("r1", 0)
    assert await b.read_scope("team") == {"api": (3.0, 1.0)}


async def test_scope_admin(backend: Backend) -> None:
    b = backend.budgets
    assert await b.read_scope("nope") == {}
    await b.set_scope("s", {"api": 1})
    await b.open_run("r", {}, {})
    assert (await b.charge("r", 0, {"api": 1}, ["s"])).ok
    await b.top_up("s", {"api": 4})
    assert await b.read_scope("s") == {"api": (5.0, 1.0)}
    await b.set_scope("s", {"api": 2})  # re-limit keeps usage
    assert await b.read_scope("s") == {"api": (2.0, 1.0)}
    await b.reset_scope("s")
    assert await b.read_scope("s") == {"api": (2.0, 0.0)}


async def test_reopen_run_with_usage(backend: Backend) -> None:
    b = backend.budgets
    await b.open_run("r", {"api": 5}, {"api": 4})
    assert not (await b.charge("r", 9, {"api": 2})).ok
    await b.close_run("r")
    await b.open_run("r", {"api": 8}, {"api": 4})
    assert (await b.charge("r", 9, {"api": 2})).ok


async def test_fractional_costs_add_up_like_floats_everywhere(backend: Backend) -> None:
    """Ten charges of 0.1 fill a limit of 1.0 (within the stores' tolerance), the eleventh is short;
    a refund gives back exactly what was taken. Every backend sums in doubles."""
    b = backend.budgets
    await b.open_run("r", {"usd": 1.0}, {})
    await b.set_scope("team", {"usd": 0.55})
    for step in range(10):
        assert (await b.charge("r", step, {"usd": 0.1})).ok
    short = await b.charge("r", 10, {"usd": 0.1})
    assert not short.ok and short.short == "usd" and short.remaining == pytest.approx(0.0, abs=1e-9)
    await b.refund("r", 3)
    assert await b.remaining("r", "usd") == pytest.approx(0.1)
    for step in range(5):
        assert (await b.charge("s", step, {"usd": 0.11}, ["team"])).ok
    assert not (await b.charge("s", 5, {"usd": 0.11}, ["team"])).ok
    assert (await b.read_scope("team"))["usd"][1] == pytest.approx(0.55)


async def test_a_refund_never_crosses_a_scope_reset(backend: Backend) -> None:
    """A charge taken before ``reset_scope`` is spent by the reset: refunding it later gives nothing back,
    so usage never goes negative and the new period's charges are not wiped (no overspend)."""
    b = backend.budgets
    await b.set_scope("day", {"api": 5})
    await b.open_run("old", {}, {})
    assert (await b.charge("old", 0, {"api": 1}, ["day"])).ok
    await b.reset_scope("day")
    await b.refund("old", 0)
    assert await b.read_scope("day") == {"api": (5.0, 0.0)}
    await b.open_run("new", {}, {})
    passed = [(await b.charge("new", step, {"api": 1}, ["day"])).ok for step in range(6)]
    assert passed == [True] * 5 + [False]
    await b.reset_scope("day")
    assert (await b.charge("new", 9, {"api": 2}, ["day"])).ok
    await b.refund("new", 0)  # charged before the second reset: the 2 taken after it stay taken
    assert await b.read_scope("day") == {"api": (5.0, 2.0)}


async def test_a_refund_never_crosses_a_reopened_run_ledger(backend: Backend) -> None:
    """Reopening a run's ledger (a resume or top-up: usage taken from its journal) starts a new period:
    a charge the earlier ledger took, refunded after, does not lower the new ledger's usage."""
    b = backend.budgets
    await b.open_run("r", {"api": 5}, {"api": 2})
    assert (await b.charge("r", 2, {"api": 1})).ok
    await b.open_run("r", {"api": 5}, {"api": 2})  # step 2 was never journaled: not in the usage
    assert (await b.charge("r", 3, {"api": 3})).ok
    await b.refund("r", 2)
    assert await b.remaining("r", "api") == 0
    assert not (await b.charge("r", 4, {"api": 1})).ok


async def test_a_step_charged_again_after_a_reopen_is_counted_by_the_new_ledger(backend: Backend) -> None:
    """A drive took the run over while another's call was in flight (charged, not journaled): the new
    ledger's usage comes from the journal, without it. When the new drive charges that step again it is
    not charged twice, but the new ledger counts it, and a refund of it gives it back there."""
    b = backend.budgets
    await b.open_run("r", {"api": 4}, {"api": 1})
    assert (await b.charge("r", 1, {"api": 1})).ok  # in flight in the process that stalls
    await b.open_run("r", {"api": 4}, {"api": 1})  # taken over: step 1 is not journaled
    assert (await b.charge("r", 1, {"api": 1})).ok  # the new drive makes step 1's call again
    assert await b.remaining("r", "api") == 2
    assert (await b.charge("r", 1, {"api": 1})).ok  # charged before, in this ledger: nothing more
    assert await b.remaining("r", "api") == 2
    await b.refund("r", 1)
    assert await b.remaining("r", "api") == 3
    assert (await b.charge("r", 2, {"api": 3})).ok
    assert not (await b.charge("r", 3, {"api": 1})).ok


async def test_a_step_charged_again_after_a_reopen_counts_when_the_ledger_is_short(backend: Backend) -> None:
    """The retried charge still succeeds when the new ledger is short of its cost (the call was charged
    once), and the ledger counts what the step took: what comes after is refused."""
    b = backend.budgets
    await b.open_run("r", {"api": 3}, {"api": 1})
    assert (await b.charge("r", 1, {"api": 1})).ok
    await b.open_run("r", {"api": 3}, {"api": 2})  # the journal says 2 were used, step 1 not among them
    assert (await b.charge("r", 1, {"api": 2})).ok  # more than is left: charged before, so it succeeds
    assert await b.remaining("r", "api") == 0  # 2 from the journal and the 1 step 1 took
