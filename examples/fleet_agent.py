"""The example fleet agent: open a ticket, search, write a report, delete it (that waits for a human).
It knows only ``castor.lib``; its tools are in ``examples/fleet_tools.py``.

    castor submit examples/fleet_agent.py:cleanup --tool examples/fleet_tools.py:open_ticket \
        --tool examples/fleet_tools.py:search --tool examples/fleet_tools.py:write_file \
        --tool examples/fleet_tools.py:delete_file --budget api=10
"""

from __future__ import annotations

from castor.lib import tool


async def cleanup() -> str:
    """Every file it writes is named after its ticket, so concurrent runs never touch each other's files."""
    ticket = await tool("open_ticket")
    hits = await tool("search", query="old logs")
    path = f"/tmp/castor-example-{ticket}.log"
    await tool("write_file", path=path, content="\n".join(hits) + "\n")
    removed = await tool("delete_file", path=path)  # destructive: waits for `castor approve`
    if isinstance(removed, dict) and removed.get("status") in ("HITL_REJECTED", "HITL_MODIFIED"):
        # A human said no (or answered instead): the report stays, and the result says why.
        return f"ticket {ticket}: wrote {path}, kept it: {removed.get('human_feedback') or 'not removed'}"
    return f"ticket {ticket}: wrote and removed {path}"
