"""A small MCP server of its own (the MCP SDK, nothing of Castor) that Castor puts in front of agents:
it lists, reads, writes and deletes the files of one directory (``$FILES_ROOT``, default
``/tmp/castor-files``).

Its annotations say what each tool does: ``list_files`` and ``read_file`` only read, ``write_file`` is not
destructive (and may run again), ``delete_file`` is. Castor reads them (``castor.mcp.upstream``): a call to
``delete_file`` waits for a human.
"""

from __future__ import annotations

import os
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

ROOT = Path(os.environ.get("FILES_ROOT", "/tmp/castor-files"))
app = MCPServer("files")


def _inside(name: str) -> Path:
    path = (ROOT / name).resolve()
    if path.parent != ROOT.resolve():
        raise ToolError(f"{name!r} is not a file of {ROOT}")
    return path


@app.tool(annotations=ToolAnnotations(readOnlyHint=True))
def list_files(suffix: str = "") -> list[str]:
    """The names of the files, those ending in ``suffix`` if given."""
    return sorted(p.name for p in ROOT.glob(f"*{suffix}") if p.is_file()) if ROOT.exists() else []


@app.tool(annotations=ToolAnnotations(readOnlyHint=True))
def read_file(name: str) -> str:
    """A file's text."""
    return _inside(name).read_text()


@app.tool(annotations=ToolAnnotations(destructiveHint=False, idempotentHint=True))
def write_file(name: str, text: str) -> str:
    """Write a file (a new one, or in place of the old)."""
    ROOT.mkdir(parents=True, exist_ok=True)
    _inside(name).write_text(text)
    return f"wrote {name}"


@app.tool(annotations=ToolAnnotations(destructiveHint=True))
def delete_file(name: str) -> str:
    """Delete a file."""
    _inside(name).unlink()
    return f"deleted {name}"


if __name__ == "__main__":
    app.run()  # stdio
