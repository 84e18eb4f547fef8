"""Settling a reservation to what a model call used: atomic in every store, never overspent under races."""

from __future__ import annotations

import asyncio
from typing import Any

from castor import Castor
from castor.lib import model_call
from castor.llm import ModelRefusedError
from castor.seams import Backend


async def test_settle_replaces_the_reservation_by_the_usage(backend: Backend) -> None:
    b = backend.budgets
    await b.set_scope("team", {"tokens": 100})
    await b.open_run("r", {"tokens": 50, "usd": 1}, {})
    assert (await b.charge("r", 0, {"tokens": 40, "usd": 0.5}, ["team"])).ok
    await b.settle("r", 0, {"tokens": 12, "usd": 0.125}, ["team"])
    assert await b.read_scope("team") == {"tokens": (100.0, 12.0)}
    assert await b.remaining("r", "tokens") == 38
    assert await b.remaining("r", "usd") == 0.875
    await b.settle("r", 0, {"tokens": 12, "usd": 0.125}, ["team"])  # settling again to the same usage: no change
    assert await b.read_scope("team") == {"tokens": (100.0, 12.0)}
    await b.refund("r", 0)  # a refund after settling gives back the settled amount, not the reservation
    assert await b.read_scope("team") == {"tokens": (100.0, 0.0)}
    assert await b.remaining("r", "tokens") == 50


async def test_settling_above_the_reservation_charges_what_was_used(backend: Backend) -> None:
    b = backend.budgets
    await b.set_scope("team", {"tokens": 100})
    await b.open_run("r", {}, {})
    assert (await b.charge("r", 0, {"tokens": 10}, ["team"])).ok
    await b.settle("r", 0, {"tokens": 30}, ["team"])
    assert await b.read_scope("team") == {"tokens": (100.0, 30.0)}


async def test_a_settle_never_crosses_a_scope_reset(backend: Backend) -> None:
    b = backend.budgets
    await b.set_scope("team", {"tokens": 100})
    await b.open_run("r", {}, {})
    assert (await b.charge("r", 0, {"tokens": 40}, ["team"])).ok
    await b.reset_scope("team")
    await b.settle("r", 0, {"tokens": 10}, ["team"])
    assert await b.read_scope("team") == {"tokens": (100.0, 0.0)}


async def test_settling_a_step_never_charged_changes_nothing(backend: Backend) -> None:
    b = backend.budgets
    await b.set_scope("team", {"tokens": 100})
    await b.open_run("r", {}, {})
    await b.settle("r", 7, {"tokens": 10}, ["team"])
    assert await b.read_scope("team") == {"tokens": (100.0, 0.0)}


RUNS = 30
LIMIT = 2_000
MAX_TOKENS = 200


async def test_concurrent_model_calls_never_overspend_a_shared_scope(backend: Backend) -> None:
    """Thirty runs call a model at once on one scope: the reservations decide who may call, every
    call that ran is settled to its usage, and the scope never holds more than its limit."""
    kernel = Castor(store=backend, scopes=["team"])
    await backend.budgets.set_scope("team", {"tokens": LIMIT})
    started = asyncio.Event()
    high_water: list[float] = []

    async def watch() -> None:
        while not started.is_set():
            high_water.append((await backend.budgets.read_scope("team"))["tokens"][1])
            await asyncio.sleep(0)

    def agent_for(n: int) -> Any:
        async def model(request: dict[str, Any]) -> dict[str, Any]:
            high_water.append((await backend.budgets.read_scope("team"))["tokens"][1])
            await asyncio.sleep(0.01 * (n % 3))  # calls overlap and finish out of order
            return {"text": "x" * n, "usage": {"input_tokens": 10 + n, "output_tokens": 100 + n}}

        async def agent() -> str:
            try:
                await model_call({"messages": [{"role": "user", "content": f"q{n}"}]}, model="m", invoke=model,
                                 max_tokens=MAX_TOKENS)
            except ModelRefusedError:
                return "refused"
            return "ran"

        return agent

    watcher = asyncio.create_task(watch())
    runs = await asyncio.gather(*(kernel.run(agent_for(n), pid=f"race-{n}") for n in range(RUNS)))
    started.set()
    await watcher
    ran = [cp for cp in runs if cp.result == "ran"]
    reservation = MAX_TOKENS + 10
    assert len(ran) >= LIMIT // (reservation + 20)  # at least as many as fit reserved all at once
    assert any(cp.result == "refused" for cp in runs)  # the race was real: some could not be covered
    spent = sum(cp.syscall_log[0].charged["tokens"] for cp in ran)
    assert (await backend.budgets.read_scope("team"))["tokens"] == (LIMIT, spent)
    assert max(high_water) <= LIMIT
    await kernel.close()


async def test_every_store_settles(backend: Backend) -> None:
    from castor.seams import Settling

    assert isinstance(backend.budgets, Settling)
