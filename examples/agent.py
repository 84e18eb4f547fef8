"""The agent of the README's CLI walk-through: it asks for tools through ``castor.lib`` and knows
nothing else about Castor. ``castor run examples/agent.py`` finds ``main``; ``:cleanup`` names it.
"""

from castor.lib import tool


async def cleanup() -> str:
    """Search for old logs, delete two files."""
    await tool("search", query="old logs")
    await tool("delete_file", path="/tmp/old1")
    await tool("delete_file", path="/tmp/old2")
    return "Cleaned up"


main = cleanup  # castor-kernel 0.5.1's README runs `agent.py:main`
