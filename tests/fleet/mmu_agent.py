"""An agent of the fleet's context-memory test: a conversation longer than the coordinators' context budget."""

from __future__ import annotations

from typing import Any

from castor.lib import memory


async def memory_job() -> dict[str, Any]:
    """Three model calls, each after a long note: the oldest notes page out; then a search finds one."""
    mem = memory()
    mem.add("system", "You take notes.")
    for topic in ("alpha", "beta", "gamma"):
        mem.add("user", f"note on {topic} " + " ".join(["detail"] * 15))
        await mem.complete(max_tokens=8)
    hits = await mem.search("alpha")
    return {"hits": [h["id"] for h in hits], "resident": len(mem.messages)}
