"""Run tools in this process: async tools on the event loop, sync tools in a thread pool (or in the
synchronous framework's thread that waits for the call: ``caller_thread``)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any

from castor.errors import ToolTimeoutError
from castor.registry import ToolRegistry
from castor.seams import ToolCall

caller_thread: ContextVar[Callable[[Callable[[], Any]], Awaitable[Any]] | None] = ContextVar(
    "castor_caller_thread", default=None
)
"""Set in a syscall's task by a synchronous framework's guarded call (``castor.frameworks._loop_calls``):
runs a function in the framework's thread, which waits for the syscall anyway. A sync tool without a
deadline runs there, as it would unguarded, rather than hopping to the pool and back."""


class LocalExecutor:
    """Calls the registered function; a sync tool never blocks the event loop."""

    writes_journal = False

    def __init__(self, tools: ToolRegistry, *, max_threads: int = 32) -> None:
        self._tools = tools
        self._max_threads = max_threads
        self._pool: ThreadPoolExecutor | None = None

    def _threads(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._max_threads, thread_name_prefix="castor-tool")
        return self._pool

    def execute(self, call: ToolCall) -> Awaitable[Any]:
        """Run the call's checked arguments with the tool's deadline; ``ToolTimeoutError`` past it.

        An async tool without a deadline is awaited directly by the kernel: no frame of our own.
        """
        spec = self._tools.get(call.tool_name)
        checked = call.checked
        arguments = call.arguments if checked is None else checked
        work: Awaitable[Any]  # annotated, not typing.cast(): a cast is a call (and a subscript) per step
        if spec.is_async:
            work = spec.func(**arguments)
        elif spec.timeout is None and (caller := caller_thread.get()) is not None:
            return caller(functools.partial(spec.func, **arguments))
        else:
            loop = asyncio.get_running_loop()
            work = loop.run_in_executor(self._threads(), functools.partial(spec.func, **arguments))
        if spec.timeout is None:
            return work
        return self._with_deadline(call, work, spec.timeout)

    async def _with_deadline(self, call: ToolCall, work: Awaitable[Any], timeout: float) -> Any:
        try:
            async with asyncio.timeout(timeout) as deadline:
                return await work
        except TimeoutError as exc:
            if not deadline.expired():
                raise  # the tool's own TimeoutError, not our deadline
            raise ToolTimeoutError(
                f"tool {call.tool_name!r} timed out after {timeout:g}s (run {call.run_id}, step {call.step})"
            ) from exc

    async def close(self) -> None:
        """Stop the thread pool without waiting for stray threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
