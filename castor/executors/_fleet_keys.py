"""Redis key names of the fleet's execution (reply streams, started markers).

Temporary home: these move into ``castor/backends/redis/keys.py`` ("fleet keys" section) once the Redis
backend lands, so that every key name is built in one module. Run-scoped keys share the run's hash tag.
"""

from __future__ import annotations


def reply_stream(prefix: str, consumer: str) -> str:
    """The stream a coordinator process reads its results from."""
    return f"{prefix}:reply:{consumer}"


def reply_stream_prefix(prefix: str) -> str:
    """What every reply stream name starts with (a worker replies to nothing else)."""
    return f"{prefix}:reply:"


def started_marker(prefix: str, run_id: str, step: int) -> str:
    """Set by a worker before it executes a step: which attempt started (a lost worker leaves it behind)."""
    return f"{prefix}:{{{run_id}}}:started:{step}"
