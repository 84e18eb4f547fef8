"""One asyncio loop per worker process, in a daemon thread, for the async Redis seams.

Pool threads (or a prefork child's one thread) hand it coroutines and wait for their results. It is
created lazily and again after a fork: a loop and its connections never cross a process boundary.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """An event loop running forever in a daemon thread of this process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="castor-worker-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result from this (other) thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Stop the loop (the thread ends with it)."""
        self.loop.call_soon_threadsafe(self.loop.stop)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop, wait for its thread and close it (its self-pipe and selector with it)."""
        if self.loop.is_closed():
            return
        self.stop()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
