"""An MCP server for the tests of ``castor.mcp.upstream`` (``python upstream_server.py LOG [--plain] [--http
PORT]``): every call it answers appends ``<pid> <tool> <arguments as JSON>`` to LOG, so a test counts what
really ran there."""

from __future__ import annotations

import json
import os
import sys
from typing import Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

LOG = sys.argv[1] if len(sys.argv) > 1 else os.devnull
app = MCPServer("upstream")
READ_ONLY = ToolAnnotations(readOnlyHint=True)
HARMLESS = ToolAnnotations(destructiveHint=False)


def ran(tool: str, **arguments: object) -> None:
    with open(LOG, "a") as log:
        log.write(f"{os.getpid()} {tool} {json.dumps(arguments, sort_keys=True)}\n")


def ran_before(tool: str) -> bool:
    if not os.path.exists(LOG):
        return False
    with open(LOG) as log:
        return any(line.split(" ")[1] == tool for line in log)


@app.tool(annotations=READ_ONLY)
def search(query: str, limit: int = 2) -> list[str]:
    """Find files whose name holds the query."""
    ran("search", query=query, limit=limit)
    return [f"/data/{query}-{i}.log" for i in range(limit)]


@app.tool(annotations=ToolAnnotations(destructiveHint=True))
def delete_file(path: str) -> str:
    """Delete a file."""
    ran("delete_file", path=path)
    return f"deleted {path}"


@app.tool()
def rotate(path: str) -> dict[str, str]:
    """No annotations: destructive, as the MCP specification reads it."""
    ran("rotate", path=path)
    return {"rotated": path}


@app.tool(annotations=HARMLESS)
def note(text: str, tag: str | None = None) -> str:
    ran("note", text=text, tag=tag)
    return f"{tag or 'note'}: {text}"


@app.tool(annotations=HARMLESS)
def pick(choice: Literal["keep", "drop"]) -> str:
    ran("pick", choice=choice)
    return choice


@app.tool(annotations=HARMLESS)
def fail(reason: str) -> str:
    ran("fail", reason=reason)
    raise ToolError(reason)


@app.tool(annotations=READ_ONLY)
def whoami() -> int:
    """The server's process id (a test kills it)."""
    ran("whoami")
    return os.getpid()


def dies_the_first_time(tool: str, answer: str) -> str:
    """The server dies in the middle of ``tool``'s first call; a later server's call answers."""
    first = not ran_before(tool)
    ran(tool)
    if first:
        os._exit(1)
    return answer


@app.tool(annotations=HARMLESS)
def vanish() -> str:
    """Not read-only; the server dies in the middle of the first call."""
    return dies_the_first_time("vanish", "back")


@app.tool(annotations=READ_ONLY)
def glance() -> str:
    """Read-only; the server dies in the middle of the first call."""
    return dies_the_first_time("glance", "seen")


def mixed(value: int | str) -> str:
    """An argument Castor's schema cannot express (either of two types)."""
    return str(value)


if "--plain" not in sys.argv:  # a server whose every tool Castor can check
    app.tool(annotations=READ_ONLY)(mixed)


if __name__ == "__main__":
    if "--http" in sys.argv:  # Streamable HTTP on 127.0.0.1 at the port after --http
        app.run("streamable-http", host="127.0.0.1", port=int(sys.argv[sys.argv.index("--http") + 1]))
    else:
        app.run()
