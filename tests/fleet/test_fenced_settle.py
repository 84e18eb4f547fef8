"""A coordinator settles a model call's reservation only while it holds the run."""

from __future__ import annotations

import pytest

from castor.backends.redis import keys
from castor.errors import StaleLeaseError
from castor.seams import Backend
from scheduler._fence import Fences, fenced
from scheduler._ops import FleetOps
from tests.fleet.test_ops import take_and_lease


async def test_a_stale_coordinator_cannot_settle(ops: FleetOps, backend: Backend) -> None:
    token = await take_and_lease(ops, "r9")
    fences = Fences(ops.redis, ops.prefix, "co-test")
    fences.tokens["r9"] = token
    store = fenced(backend, fences)
    await store.budgets.open_run("r9", {"tokens": 100}, {})
    assert (await store.budgets.charge("r9", 0, {"tokens": 60})).ok
    await store.budgets.settle("r9", 0, {"tokens": 10})  # type: ignore[attr-defined]
    assert await backend.budgets.remaining("r9", "tokens") == 90
    assert (await store.budgets.charge("r9", 1, {"tokens": 50})).ok
    await ops.redis.set(keys.lease(ops.prefix, "r9"), "co-other/1")  # another coordinator took the run over
    with pytest.raises(StaleLeaseError, match="co-other"):
        await store.budgets.settle("r9", 1, {"tokens": 5})  # type: ignore[attr-defined]
    assert await backend.budgets.remaining("r9", "tokens") == 40  # the new owner's ledger is untouched
