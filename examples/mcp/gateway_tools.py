"""Tools the example MCP gateway serves (``castor mcp --config examples/mcp/castor.toml``).

Plain functions: Castor reads their signatures for the argument schema MCP clients see, and their
docstrings for the descriptions. ``append_line`` is destructive (``castor.toml`` says so): every call
waits for a human's ``castor approve``.
"""

from __future__ import annotations

import os
from pathlib import Path

NOTES = Path(os.environ.get("CASTOR_MCP_NOTES", "mcp-notes.txt"))


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def read_notes() -> str:
    """The notes file's content (empty when there is none)."""
    return NOTES.read_text() if NOTES.exists() else ""


def append_line(text: str) -> str:
    """Append one line to the notes file."""
    with NOTES.open("a") as notes:
        notes.write(text.replace("\n", " ") + "\n")
    return f"appended to {NOTES}"
