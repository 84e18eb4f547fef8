"""Agents of the fleet tests: they know only ``castor.lib``."""

from __future__ import annotations

from typing import Any

from castor.lib import tool


async def job() -> dict[str, Any]:
    """Five calls on two pools, no approval."""
    t = await tool("ticket")
    for i in range(2):
        await tool("fetch", tag=f"{t}:fetch{i}", seconds=0.2)
    await tool("store", tag=f"{t}:store")
    last = await tool("fetch", tag=f"{t}:fetch2", seconds=0.2)
    return {"ticket": t, "last": last}


async def job_with_approval() -> dict[str, Any]:
    """Like ``job``, with a destructive call in the middle that waits for a human."""
    t = await tool("ticket")
    await tool("fetch", tag=f"{t}:fetch0", seconds=0.2)
    removed = await tool("remove", tag=f"{t}:remove")
    await tool("store", tag=f"{t}:store")
    return {"ticket": t, "removed": removed}


async def long_job() -> dict[str, Any]:
    """Eight slow calls: still running when its coordinator is drained."""
    t = await tool("ticket")
    for i in range(8):
        await tool("fetch", tag=f"{t}:fetch{i}", seconds=0.25)
    return {"ticket": t}


async def slow_job() -> dict[str, Any]:
    """A slow call in the middle: its coordinator is paused while the call runs on a worker."""
    t = await tool("ticket")
    await tool("fetch", tag=f"{t}:slow", seconds=2.5)
    await tool("store", tag=f"{t}:store")
    await tool("fetch", tag=f"{t}:after")
    return {"ticket": t}


async def quick_job() -> str:
    """Four fast calls (the throughput bench)."""
    t = await tool("ticket")
    for i in range(3):
        await tool("fetch", tag=f"{t}:q{i}")
    return t


async def approve_then_go() -> str:
    """A destructive call first, then one more (the approval latency bench)."""
    await tool("remove", tag="bench")
    return str(await tool("store", tag="bench-after"))


async def park_only() -> None:
    """Waits for a human at its first call (the parked-runs bench)."""
    await tool("remove", tag="parked")


async def outage_job() -> str:
    """A 6 s non-idempotent call between two quick ones; the file it notes its starts in is named by the
    coordinator's environment (``CASTOR_TEST_STARTS``), as the call's length may be (``CASTOR_TEST_SECONDS``)."""
    import os

    t = await tool("ticket")
    seconds = float(os.environ.get("CASTOR_TEST_SECONDS", "6"))
    await tool("slow_write", path=os.environ["CASTOR_TEST_STARTS"], seconds=seconds)
    await tool("store", tag=f"{t}:after")
    return str(t)


async def poison() -> None:
    """Kills the process driving it, every time, after its first call (a coordinator crash loop, if let)."""
    import os
    import signal

    await tool("ticket")
    os.kill(os.getpid(), signal.SIGKILL)


async def handover_job() -> dict[str, Any]:
    """A 6 s call in the middle: its coordinator is killed while a worker runs it."""
    t = await tool("ticket")
    await tool("fetch", tag=f"{t}:slow", seconds=6)
    await tool("store", tag=f"{t}:store")
    return {"ticket": t}


async def restart_job() -> dict[str, Any]:
    """A 3 s call during which Redis restarts, then a quick one."""
    t = await tool("ticket")
    slow = await tool("fetch", tag=f"{t}:slow", seconds=3)
    await tool("store", tag=f"{t}:store")
    return {"ticket": t, "slow": slow}
