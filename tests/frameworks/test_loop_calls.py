"""``call_on_loop``: a synchronous framework's call awaited on the run's loop, the framework's thread running
what the loop hands it meanwhile (``castor.frameworks._loop_calls``)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

import pytest

from castor.errors import UnsupportedError
from castor.frameworks._common import in_thread
from castor.frameworks._loop_calls import Here, call_on_loop
from castor.kernel.context import RunEnding
from castor.llm import ModelCallError


def where() -> str:
    return threading.current_thread().name


async def test_the_call_runs_on_the_loop_and_its_handed_work_in_the_waiting_thread() -> None:
    loop_thread = where()

    async def start(here: Here) -> tuple[str, str]:
        worked = await here.run(where)
        return where(), worked

    def framework() -> tuple[tuple[str, str], str]:
        return call_on_loop("test", start, "runner()"), where()

    (on_loop, worked), thread = await in_thread(framework)
    assert on_loop == loop_thread and worked == thread != loop_thread


async def test_errors_cross_as_themselves_and_a_run_ending_error_carried() -> None:
    def stop() -> Any:
        raise StopIteration  # a future refuses it: it arrives as a RuntimeError

    def missing() -> Any:
        raise KeyError("missing")

    async def start(here: Here) -> None:
        with pytest.raises(KeyError):
            await here.run(missing)
        with pytest.raises(RuntimeError, match="StopIteration"):
            await here.run(stop)
        raise ModelCallError("the model failed")

    def framework() -> BaseException:
        try:
            call_on_loop("test", start, "runner()")
        except BaseException as error:  # RunEnding is one: what a framework's except Exception lets pass
            return error
        raise AssertionError("no error")

    error = await in_thread(framework)
    assert isinstance(error, RunEnding) and isinstance(error.error, ModelCallError)


async def test_a_call_on_the_runs_loop_is_refused_naming_the_runner() -> None:
    async def start(here: Here) -> None:
        await asyncio.sleep(0)

    with pytest.raises(UnsupportedError, match=r"call `await runner\(\)` inside a Castor run"):
        call_on_loop("test", start, "runner()")


async def test_a_wait_cancelled_on_the_loop_ends_the_call_and_the_threads_late_answer_is_dropped() -> None:
    def slow() -> int:
        threading.Event().wait(0.05)
        return 1

    async def start(here: Here) -> int:
        assert here.task is not None
        asyncio.get_running_loop().call_later(0.01, here.task.cancel)
        return await here.run(slow)

    def framework() -> BaseException:
        try:
            call_on_loop("test", start, "runner()")
        except BaseException as error:
            return error
        raise AssertionError("no error")

    assert isinstance(await in_thread(framework), asyncio.CancelledError)


seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")


async def test_each_call_runs_in_a_copy_of_the_calling_threads_context() -> None:
    async def start(here: Here) -> str:
        value = seen.get()
        seen.set("set on the loop")  # the call's own copy: not the thread's, not the next call's
        assert await here.run(seen.get) == value  # the thread's own context, as the call found it
        return value

    def framework() -> list[str]:
        got = []
        for value in ("first", "second"):
            seen.set(value)
            got.append(call_on_loop("test", start, "runner()"))
        return [*got, seen.get()]

    assert await in_thread(framework) == ["first", "second", "second"]
