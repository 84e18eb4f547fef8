"""A synchronous framework's guarded call answered on the run's loop, in one hop each way.

A synchronous framework (smolagents) runs its loop in a thread of its own (``_common.in_thread``); each
guarded model or tool call is a syscall awaited on the run's event loop while that thread waits. The
thread is blocked for the whole syscall, so the framework's own synchronous model can run there, when
the syscall (on the loop) asks for it: no third thread and no executor hop for a live model step.

``call_on_loop(framework, start, runner)`` awaits ``start(here)`` on the run's loop; meanwhile the thread
runs whatever ``await here.run(func)`` hands it and settles the loop's future with the outcome. The
thread never touches the run's state: the loop side hands it the framework's own callable (the wrapped
model), and the loop's task waits on a future while the thread works. Per call: one task on the loop
(in a copy of the thread's context, as ``asyncio.run_coroutine_threadsafe`` would make) and one
``SimpleQueue`` the loop answers on; about half the instructions of ``run_coroutine_threadsafe`` and a
concurrent future's condition, and a third of ``asyncio.to_thread`` (bench/frameworks.py --icount).
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from castor.executors.local import caller_thread
from castor.frameworks._common import _RUN_ENDING, _RUN_LOOP, RunEnding, run_loop

_DONE = object()  # the inbox's last item: the syscall's outcome follows it
T = TypeVar("T")


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the syscall gave up meanwhile (cancelled): nobody reads the outcome
        return
    if error is None:
        future.set_result(value)
    elif isinstance(error, StopIteration):  # a future refuses it (it would end the awaiting coroutine)
        future.set_exception(RuntimeError(f"{type(error).__name__} raised: {error}"))
    else:
        future.set_exception(error)


class Here:
    """The framework's thread waiting for one call on the run's loop: ``await run(func)`` (on the loop)
    has it call ``func()`` there and returns what it returned (raises what it raised)."""

    __slots__ = ("_inbox", "_loop", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._inbox: queue.SimpleQueue[tuple[Any, Any, Any]] = queue.SimpleQueue()
        self.task: asyncio.Task[None] | None = None  # held: the loop keeps only weak references to tasks

    async def run(self, func: Callable[[], Any]) -> Any:
        """``func()`` called in the waiting framework thread (awaited on the run's loop)."""
        future = self._loop.create_future()
        self._inbox.put((future, func, None))
        return await future

    def _serve(self) -> Any:
        """In the framework thread: run the loop's requests until the call's outcome comes, then return it."""
        get, loop = self._inbox.get, self._loop
        while True:
            future, value, error = get()
            if future is _DONE:
                if error is not None:
                    raise error
                return value
            try:
                answer = value()
            except BaseException as failure:  # the loop side raises it where it awaits the answer
                loop.call_soon_threadsafe(_settle, future, None, failure)
            else:
                loop.call_soon_threadsafe(_settle, future, answer, None)

    async def _main(self, start: Callable[[Here], Awaitable[Any]]) -> None:
        caller_thread.set(self.run)  # this task's own context: its sync tools run in the waiting thread
        try:
            value = await start(self)
        except BaseException as error:  # a suspension, a cancellation too: the thread raises it as itself
            self._inbox.put((_DONE, None, error))
        else:
            self._inbox.put((_DONE, value, None))

    def _begin(self, start: Callable[[Here], Awaitable[Any]]) -> None:
        self.task = self._loop.create_task(self._main(start))


def call_on_loop(framework: str, start: Callable[[Here], Awaitable[Any]], runner: str) -> Any:
    """Await ``start(here)`` on the run's loop from a framework's synchronous code running under
    ``in_thread``; the thread runs what ``here.run`` hands it meanwhile. An error that ends the run is
    raised carried (``RunEnding``) through the framework's error handling, as ``_common.blocking`` does."""
    loop = _RUN_LOOP.get()
    if loop is None or asyncio._get_running_loop() is not None:  # no exception raised and caught per call
        loop = run_loop(f"a guarded {framework} call made", runner)  # raises the error naming ``runner``
    here = Here(loop)
    loop.call_soon_threadsafe(here._begin, start)  # the handle runs in a copy of this thread's context
    try:
        return here._serve()
    except _RUN_ENDING as error:
        raise RunEnding(error) from error


def blocking(framework: str, start: Callable[[], Awaitable[Any]], runner: str) -> Any:
    """Await ``start()`` on the run's loop from a framework's synchronous code running under ``in_thread``
    (``runner``: what the error tells to call instead when there is no such thread): ``call_on_loop`` for a
    call that hands the thread nothing to run."""
    return call_on_loop(framework, lambda _here: start(), runner)


async def on_run_loop(start: Callable[[], Awaitable[T]]) -> T:
    """``start()`` awaited on the run's loop from a framework's async code: here when this is the run's loop
    (or none is noted: this one is taken to be it), else handed to the run's loop and awaited here, without
    blocking this one (CrewAI awaits an LLM's ``acall`` on a loop of its own, ``asyncio.run`` in the crew's
    thread). Handed over, it runs in a copy of this context (the run, the framework's call-scoped settings).
    An error that ends the run is raised carried (``RunEnding``) past the framework's error handling, as
    ``call_on_loop`` does."""
    loop = _RUN_LOOP.get()
    try:
        if loop is None or loop is asyncio.get_running_loop():
            return await start()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_awaited(start), loop))
    except _RUN_ENDING as error:
        raise RunEnding(error) from error


async def _awaited(start: Callable[[], Awaitable[T]]) -> T:
    return await start()
