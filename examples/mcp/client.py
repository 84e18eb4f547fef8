"""A client of the example MCP gateway, with the MCP SDK's own client (run from the repository root):

    python examples/mcp/client.py                # approve in another terminal when it says so
    python examples/mcp/client.py --approve-here # the script approves from a subprocess itself

It starts ``castor mcp --config examples/mcp/castor.toml --db mcp.db --pid example-session`` over stdio,
as a desktop client would, lists the tools, makes a safe call, then a destructive one that waits for
``castor approve example-session --db mcp.db`` while the gateway sends progress notifications.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from typing import Any

from mcp import Client
from mcp.client.stdio import StdioServerParameters

PID = "example-session"


def text(result: Any) -> str:
    return "".join(getattr(part, "text", "") for part in result.content)


async def main(db: str, approve_here: bool) -> None:
    gateway = StdioServerParameters(
        command=sys.executable,
        args=["-m", "castor", "mcp", "--config", "examples/mcp/castor.toml", "--db", db, "--pid", PID],
        # An MCP client passes a server only a few environment variables: hand the notes file on.
        env={"CASTOR_MCP_NOTES": os.environ.get("CASTOR_MCP_NOTES", "mcp-notes.txt")},
    )
    async with Client(gateway) as client:
        for tool in (await client.list_tools()).tools:
            hint = " (destructive)" if tool.annotations and tool.annotations.destructive_hint else ""
            print(f"tool {tool.name}{hint}: {tool.description}")
        print("add(2, 3) ->", text(await client.call_tool("add", {"a": 2, "b": 3})))

        asked = asyncio.Event()

        async def progress(done: float, total: float | None, message: str | None) -> None:
            print(f"  ... {message}")
            asked.set()

        call = asyncio.create_task(
            client.call_tool("append_line", {"text": "hello from MCP"}, progress_callback=progress,
                             meta={"castor/idempotency_key": "example-append-1"})
        )
        # The call waits for a human (progress comes) unless an earlier run of this script in the same
        # session decided it: the same idempotency key is then answered from the journal at once.
        progressed = asyncio.create_task(asked.wait())
        await asyncio.wait({call, progressed}, return_when=asyncio.FIRST_COMPLETED)
        progressed.cancel()
        if call.done():
            print(f"  (decided in an earlier run of session {PID}: answered from its journal, not run again)")
        elif approve_here:
            subprocess.run([sys.executable, "-m", "castor", "approve", PID, "--db", db, "--as", "example"], check=True)
        else:
            print(f"approve it in another terminal: castor approve {PID} --db {db}")
        result = await call
        print("append_line ->", ("ERROR: " if result.is_error else "") + text(result))
        print("read_notes ->", repr(text(await client.call_tool("read_notes", {}))))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="mcp.db")
    parser.add_argument("--approve-here", action="store_true")
    options = parser.parse_args()
    asyncio.run(main(options.db, options.approve_here))
