"""Tools of the fleet tests. Each call counts itself in Redis under the test's prefix
(``CASTOR_TEST_PREFIX``) by its tag, so a test can tell that a call ran exactly once."""

from __future__ import annotations

import os
import time
import uuid

import redis

from castor import castor_tool

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ.get("CASTOR_TEST_REDIS", "redis://127.0.0.1:6379/0"))
    return _client


def count(tag: str) -> None:
    """One more execution of the call tagged ``tag``."""
    _redis().incr(f"{os.environ['CASTOR_TEST_PREFIX']}:count:{tag}")


def ticket() -> str:
    """A unique id for the run (web pool): a journaled result, so a replay sees the same one."""
    count("tickets")
    return uuid.uuid4().hex[:12]


def fetch(tag: str, seconds: float = 0.0) -> str:
    """A web call (web pool). A slow one takes ``seconds``, or, where the test names a release file
    (``CASTOR_TEST_RELEASE``), lasts until the test creates it: a test whose point is what happens while
    the call runs must not race the call's end on a loaded machine."""
    release = os.environ.get("CASTOR_TEST_RELEASE")
    if seconds and release:
        deadline = time.monotonic() + 120
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.05)
    elif seconds:
        time.sleep(seconds)
    count(tag)
    return f"fetched {tag}"


def store(tag: str) -> str:
    """A file write (fs pool)."""
    count(tag)
    return f"stored {tag}"


@castor_tool(destructive=True)
def remove(tag: str) -> str:
    """A deletion (fs pool): waits for a human outside speculative mode."""
    count(tag)
    return f"removed {tag}"


def slow_write(path: str, seconds: float = 5.0) -> str:
    """A non-idempotent write (fs pool) that notes each start in the file ``path`` (Redis may be away), then
    takes ``seconds``."""
    with open(path, "a") as fh:
        fh.write(f"start {os.getpid()}\n")
    time.sleep(seconds)
    return f"wrote {path}"


async def pid_of() -> int:
    """The process that runs the call (tests that run tools in the coordinator)."""
    return os.getpid()
