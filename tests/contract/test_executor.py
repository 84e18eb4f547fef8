"""The Executor seam: what the kernel may count on from every executor, in this process or on a worker.

A call returns its result (sync and async tools); a tool's exception reaches the caller as the same
outcome (the type name and message the kernel journals); a tool past its deadline is a
``ToolTimeoutError``; arguments arrive with their types; many calls at once each get their own answer,
and run at the same time.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from castor import ToolTimeoutError
from tests.contract.executors import CONCURRENCY, ExecutorCase


def outcome(exc: BaseException) -> tuple[str, str]:
    """A failure as the kernel records it (``syscall.execute``): the tool's error type name and message."""
    return getattr(exc, "error_type", None) or type(exc).__name__, getattr(exc, "tool_message", None) or str(exc)


async def test_a_sync_tool_returns_its_result(executor: ExecutorCase) -> None:
    assert await executor.executor.execute(executor.call("add", a=2, b=3)) == 5


async def test_an_async_tool_returns_its_result(executor: ExecutorCase) -> None:
    assert await executor.executor.execute(executor.call("greet", name="ada")) == "hello ada"


@pytest.mark.parametrize(("tool", "kind"), [("explode", "ValueError"), ("aexplode", "LookupError")])
async def test_a_tools_exception_reaches_the_caller_with_its_type_and_message(
    executor: ExecutorCase, tool: str, kind: str
) -> None:
    with pytest.raises(Exception) as raised:
        await executor.executor.execute(executor.call(tool, message="disk on fire"))
    assert outcome(raised.value) == (kind, "disk on fire")


@pytest.mark.parametrize("tool", ["dawdle", "adawdle"])
async def test_a_tool_past_its_deadline_is_a_timeout(executor: ExecutorCase, tool: str) -> None:
    started = time.monotonic()
    with pytest.raises(ToolTimeoutError, match=f"tool '{tool}' timed out after 1s"):
        await executor.executor.execute(executor.call(tool, seconds=4))
    assert time.monotonic() - started < 3.5  # cut at its deadline, not after the tool's four seconds


async def test_arguments_arrive_with_their_types(executor: ExecutorCase) -> None:
    given = {
        "count": 3, "ratio": 2.0, "flag": False, "name": "zoë ✓", "words": ["a", "b"], "table": {"x": 1},
        "nested": {"k": [{"v": 0.5}]}, "missing": None,
    }
    seen = await executor.executor.execute(executor.call("describe", **given))
    assert seen["values"] == given
    assert seen["types"] == {
        "count": "int", "ratio": "float", "flag": "bool", "name": "str", "words": "list", "table": "dict",
        "nested": "dict", "missing": "NoneType",
    }


async def test_many_calls_at_once_each_get_their_own_answer(executor: ExecutorCase) -> None:
    calls = [executor.call("add", a=n, b=1000) if n % 2 else executor.call("greet", name=str(n)) for n in range(40)]
    results = await asyncio.gather(*(executor.executor.execute(c) for c in calls))
    assert results == [n + 1000 if n % 2 else f"hello {n}" for n in range(40)]


@pytest.fixture
def rendezvous() -> Iterator[tuple[int, list[int]]]:
    """A port where ``CONCURRENCY`` callers meet: once that many are connected, each is told how many
    came. Yields the port and the callers' numbers as they arrived."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    arrived: list[int] = []

    def host() -> None:
        conns = []
        try:
            for _ in range(CONCURRENCY):
                conn = listener.accept()[0]
                arrived.append(int(conn.makefile().readline()))
                conns.append(conn)
        except TimeoutError:
            pass  # fewer came at once: each of those is told the count it reached
        for conn in conns:
            with conn:
                conn.sendall(f"{len(conns)}\n".encode())

    thread = threading.Thread(target=host, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], arrived
    finally:
        thread.join(30)
        listener.close()


async def test_calls_run_at_the_same_time(executor: ExecutorCase, rendezvous: tuple[int, list[int]]) -> None:
    port, arrived = rendezvous
    calls = [executor.call("meet", port=port, me=n) for n in range(CONCURRENCY)]
    together = await asyncio.gather(*(executor.executor.execute(c) for c in calls))
    assert together == [CONCURRENCY] * CONCURRENCY  # all of them were in the tool at once
    assert sorted(arrived) == list(range(CONCURRENCY))


async def test_an_executor_that_writes_the_journal_has_the_step_there_when_it_answers(
    executor: ExecutorCase,
) -> None:
    call = executor.call("add", a=20, b=22)
    assert await executor.executor.execute(call) == 42
    if not executor.executor.writes_journal:
        return  # the kernel journals the step itself
    assert executor.journal is not None
    record = await executor.journal.get(call.run_id, call.step)
    assert record is not None and (record.tool_name, record.response) == ("add", 42)
