"""Tools for the README's CLI walk-through: plain functions that know nothing about Castor.

    castor run examples/agent.py:cleanup --tool examples/tools.py:search \
        --tool examples/tools.py:delete_file --destructive --budget api=50

``delete_file`` only says what it would delete, so the walk-through is safe to run anywhere.
"""


async def search(query: str) -> list[str]:
    """Search for ``query``."""
    return [f"Result for: {query}"]


async def delete_file(path: str) -> str:
    """Delete ``path`` (pretend)."""
    return f"Deleted {path}"
