"""A model call of the fleet's ``llm`` pool whose worker was lost (the executor raises ``InDoubtError``), with an
in-process stand-in for the pool (``PoolExecutor``: it settles and journals as a worker of the pool does): made
again in a round of its own with the first call's charge (retry), a human asked (ask), or failed (fail)."""

from __future__ import annotations

from typing import Any

import pytest

from castor import Castor
from castor.errors import InDoubtError
from castor.lib import complete, stream
from castor.llm import ModelCallError
from castor.seams import ToolCall
from castor.settings import Settings
from tests.llm.test_llm_fleet_parts import LLM, PoolExecutor

ANSWER = {"text": "hi there", "usage": {"input_tokens": 7, "output_tokens": 3}, "model": "m1"}


class LosingPool(PoolExecutor):
    """The pool's first worker is lost mid-call (``InDoubtError``); a later round is answered. A stream's
    chunks reach ``chunk`` before the loss when ``chunks`` are given."""

    def __init__(self, chunks: list[str] | None = None) -> None:
        super().__init__(Settings(llm=LLM), ANSWER)
        self.attempts: list[int] = []
        self.checked: list[dict[str, Any]] = []
        self.chunks = chunks

    async def execute(self, call: ToolCall) -> Any:
        self.attempts.append(call.attempt)
        self.checked.append(dict(call.checked or {}))
        if call.attempt == 0:
            self.sent.append(call)
            raise InDoubtError(f"in doubt: started and never finished: {call.tool_name!r} on a worker of pool 'llm'")
        # as decoded off the wire: the checked arguments carry the first call's charge (spent) to settle beside
        job = ToolCall(call.run_id, call.step, call.tool_name, call.journaled_arguments(), checked=call.checked,
                       attempt=call.attempt, charged=dict(call.charged or {}), usage=call.usage)
        response = dict(ANSWER)
        await self.models.settle(self.backend, job, response)
        await self.backend.journal.append(job.run_id, job.step, job.record(response))
        call.finished_at = job.finished_at
        return response

    async def execute_stream(self, call: ToolCall, chunk: Any) -> Any:
        for text in self.chunks or []:
            chunk(text)
        return await self.execute(call)


async def kernel(pool: LosingPool, policy: str) -> Castor:
    k = Castor(executor=lambda tools: pool, scopes=["team"], llm_in_doubt=policy)
    pool.backend = k.backend
    await k.backend.budgets.set_scope("team", {"tokens": 5_000})
    return k


async def agent() -> str:
    return (await complete(prompt="hello", max_tokens=50)).text


async def test_a_pool_call_in_doubt_is_sent_again_in_a_new_round_with_the_first_calls_charge() -> None:
    pool = LosingPool()
    k = await kernel(pool, "retry")
    cp = await k.run(agent)
    assert cp.status == "COMPLETED" and cp.result == "hi there"
    assert pool.attempts == [0, 1]
    (first,) = [f for f in cp.failures if f.charged]
    assert pool.checked[1]["spent"] == first.charged  # the worker settles the step to both
    used = (await k.backend.budgets.read_scope("team"))["tokens"][1]
    assert used == first.charged["tokens"] + 10 and cp.syscall_log[0].charged["tokens"] == 10


async def test_with_fail_a_pool_call_in_doubt_fails_and_is_refunded() -> None:
    pool = LosingPool()
    k = await kernel(pool, "fail")
    with pytest.raises(InDoubtError):
        await k.run(agent)
    assert pool.attempts == [0] and await k.backend.budgets.read_scope("team") == {"tokens": (5_000, 0)}


async def test_with_ask_a_pool_call_in_doubt_waits_for_a_human_then_is_sent_again() -> None:
    pool = LosingPool()
    k = await kernel(pool, "ask")
    cp = await k.run(agent, pid="asked")
    assert cp.status == "SUSPENDED_FOR_HITL" and pool.attempts == [0]
    await k.approve("asked")
    cp = await k.run(agent, pid="asked")
    assert cp.status == "COMPLETED" and pool.attempts == [0, 1]
    (first,) = [f for f in cp.failures if f.charged]
    assert (await k.backend.budgets.read_scope("team"))["tokens"][1] == first.charged["tokens"] + 10


async def test_a_stream_in_doubt_after_its_first_chunks_is_not_made_again_and_is_charged_what_it_got() -> None:
    pool = LosingPool(chunks=["hi", " the"])
    k = await kernel(pool, "retry")

    async def reader() -> list[str]:
        return [chunk async for chunk in stream(prompt="hello", max_tokens=50)]

    with pytest.raises((InDoubtError, ModelCallError)):
        await k.run(reader, pid="cut")
    cp = await k.aload("cut")
    assert pool.attempts == [0] and cp.partial_work == "hi the"
    (charged,) = [f.charged for f in cp.failures if f.charged]
    assert (await k.backend.budgets.read_scope("team"))["tokens"][1] == charged["tokens"] > 0
