"""A call no budget limits: charged only where the store must check something on every charge.

The kernel skips a charge of nothing on a store that says it never refuses one (the memory and SQLite
stores: ``empty_charges_checked = False``). Any other store (the Redis one, which checks a fenced run's
lease there, or a store of the user's own that says nothing) is charged for every call, and may refuse it
before the tool runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from castor import Castor, StaleLeaseError
from castor.backends.memory import MemoryBudgetStore, memory_backend
from castor.lib import model_call, tool
from castor.seams import Charge


class Counted(MemoryBudgetStore):
    """The memory store, counting its charges; ``checks`` says whether it wants empty ones too."""

    def __init__(self, checks: bool, refuse: bool = False) -> None:
        super().__init__()
        self.empty_charges_checked = checks  # per instance, for the test
        self.refuse = refuse
        self.charges: list[tuple[int, dict[str, float]]] = []

    async def charge(
        self, run_id: str, step: int, cost: Mapping[str, float], scopes: Sequence[str] = ()
    ) -> Charge:
        self.charges.append((step, dict(cost)))
        if self.refuse:
            raise StaleLeaseError("this drive's lease is gone")
        return await super().charge(run_id, step, cost, scopes)


async def answer(request: dict[str, Any]) -> dict[str, Any]:
    return {"text": "ok", "usage": {"input_tokens": 3, "output_tokens": 2}}


def kernel(store: Counted, ran: list[int]) -> Castor:
    async def send(n: int) -> int:
        ran.append(n)
        return n

    backend = memory_backend()
    backend.budgets = store
    return Castor(tools=[send], store=backend)


async def agent() -> str:
    await tool("send", n=1)
    await model_call({"messages": [{"role": "user", "content": "hi"}]}, model="m", invoke=answer)
    return str(await tool("send", n=2))


async def test_a_store_that_never_refuses_an_empty_charge_is_not_charged_for_free_calls() -> None:
    store, ran = Counted(checks=False), list[int]()
    cp = await kernel(store, ran).run(agent)
    assert cp.status == "COMPLETED" and ran == [1, 2]
    assert store.charges == []
    assert cp.syscall_log[0].charged == {"api": 1.0}  # the journal still records what each call cost


@pytest.mark.parametrize("budgets", [None, {"tokens": 10_000}])
async def test_a_store_that_checks_every_charge_is_charged_for_every_call(budgets: dict[str, float] | None) -> None:
    store, ran = Counted(checks=True), list[int]()
    cp = await kernel(store, ran).run(agent, budgets=budgets)
    assert cp.status == "COMPLETED" and ran == [1, 2]
    assert [step for step, _ in store.charges] == [0, 1, 2]  # the model call too


class Unsaid:
    """A store of the user's own that says nothing of empty charges: the memory store's, delegated."""

    def __init__(self) -> None:
        self.inner = Counted(checks=False, refuse=True)

    def __getattr__(self, name: str) -> Any:
        if name == "empty_charges_checked":
            raise AttributeError(name)
        return getattr(self.inner, name)


async def test_a_store_that_says_nothing_is_charged_for_free_calls_and_its_refusal_stops_the_tool() -> None:
    store, ran = Unsaid(), list[int]()
    with pytest.raises(StaleLeaseError, match="lease is gone"):
        await kernel(store, ran).run(agent)  # type: ignore[arg-type]
    assert ran == [] and store.inner.charges == [(0, {})]
