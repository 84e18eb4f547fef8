"""An example agent: find old logs, keep a report, delete the logs. It knows only ``castor.lib``.

    castor submit examples/agent.py:cleanup --tool examples/tools.py:search --tool examples/tools.py:fetch \
        --tool examples/tools.py:write_file --tool examples/tools.py:delete_file \
        --destructive delete_file --budget api=20
"""

from __future__ import annotations

from castor.lib import tool


async def cleanup() -> str:
    """Search, look at each hit, write a report, then delete the hits (each deletion waits for a human)."""
    hits = await tool("search", query="old logs")
    sizes = [await tool("fetch", url=f"file://{name}") for name in hits]
    total = sum(int(s["bytes"]) for s in sizes if isinstance(s, dict))
    await tool("write_file", name="report.txt", content=f"{len(hits)} logs, {total} bytes\n")
    for name in hits:
        await tool("write_file", name=name, content="old\n")
    deleted = [await tool("delete_file", name=name) for name in hits]
    return f"cleaned up {len(deleted)} logs ({total} bytes)"
