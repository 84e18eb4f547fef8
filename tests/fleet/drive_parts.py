"""An agent and a tool driven inside the test's own process (``test_drives``): the tool records each start
and waits until the test lets it finish."""

from __future__ import annotations

import asyncio

from castor.lib import tool

starts: list[int] = []
gate = asyncio.Event()  # replaced by each test (an event belongs to one event loop)


async def hold() -> int:
    """Starts (counted), waits for the gate, returns which start it was."""
    starts.append(len(starts) + 1)
    n = len(starts)
    await gate.wait()
    return n


async def one_hold() -> int:
    """One call of ``hold``."""
    return int(await tool("hold"))
