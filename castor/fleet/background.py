"""Stopping background asyncio tasks without trusting one cancellation to arrive.

On Python 3.11 a cancellation can be lost: ``asyncio.wait_for`` (which client libraries use to time
their reads) returns the inner result when the operation completes at the moment the cancel lands, and
the task carries on as if nothing happened. A reader or heartbeat loop that only stops on cancellation
then runs forever, and whoever awaits it hangs. So loops also check a flag, and ``stop_tasks`` cancels
again what is still running, for a bounded time.

Part of the fleet's supported API (``castor.fleet``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

RECANCEL_EVERY = 0.5  # seconds between cancellations of a task that is still running


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], timeout: float) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait for them, cancelling again every half second those still running;
    returns the ones that did not stop within ``timeout``. Their exceptions are retrieved (not raised)."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    deadline = time.monotonic() + timeout
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - time.monotonic()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_EVERY, left))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a loop that ended on an error was logged where it happened
    return pending
