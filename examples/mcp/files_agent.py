"""An agent that tidies a directory through the example MCP server's tools (``upstream.py``).

    castor run examples/mcp/files_agent.py:main --tool examples/mcp/upstream.py:files --db castor.db
    castor approve <pid> --db castor.db        # the first delete runs, once; the second waits in turn
    castor approve <pid> --db castor.db        # the second delete runs; the run finishes

It writes two old log files to work on first (in ``$FILES_ROOT``, default ``/tmp/castor-files``), through
the server too: an agent's own side effects would be made again each time the run is resumed, its
tools' are journaled.
"""

from __future__ import annotations

from castor.lib import tool


async def main() -> str:
    for name in ("app-1.log", "app-2.log"):
        await tool("write_file", name=name, text=f"old lines of {name}\n")
    logs = await tool("list_files", suffix=".log")
    first = await tool("read_file", name=logs[0])
    gone = [await tool("delete_file", name=name) for name in logs]
    return f"read {len(first)} characters of {logs[0]}; {', '.join(gone)}"
