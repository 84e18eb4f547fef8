"""Tools the Celery tests' workers serve. They count their starts and completions in Redis keys under the
test session's prefix (``CASTOR_TEST_PREFIX``), so a test can tell how often a call really ran."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import redis

from castor import castor_tool

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ.get("CASTOR_TEST_REDIS", "redis://127.0.0.1:6379/0"))
    return _client


def _count(tag: str, what: str) -> None:
    _redis().incr(f"{os.environ['CASTOR_TEST_PREFIX']}:count:{tag}:{what}")


def _mark_running(tag: str) -> None:
    """Tell the test which process runs the call (it may SIGKILL it)."""
    _redis().set(f"{os.environ['CASTOR_TEST_PREFIX']}:pid:{tag}", os.getpid(), ex=60)


def search(query: str) -> dict[str, str]:
    """Runs on the web pool."""
    return {"query": query, "pool": os.environ.get("CASTOR_TEST_POOL", "?")}


async def summarize(text: str) -> dict[str, str]:
    """An async tool on the web pool."""
    await asyncio.sleep(0)
    return {"summary": text[:10], "pool": os.environ.get("CASTOR_TEST_POOL", "?")}


@castor_tool(sensitive=["content"])
def write_note(name: str, content: str) -> dict[str, str]:
    """Runs on the fs pool; its content is sensitive."""
    _count(name, "done")
    return {"name": name, "size": str(len(content)), "pool": os.environ.get("CASTOR_TEST_POOL", "?")}


@castor_tool(destructive=True)
def delete_file(path: str) -> str:
    """Destructive: runs only with an approval or a coordinator's token."""
    _count(path, "done")
    return f"deleted {path}"


def _run_slowly(tag: str, seconds: float) -> None:
    """Count the start, say where it runs, take ``seconds``, count the end (a kill in between shows)."""
    _count(tag, "start")
    _mark_running(tag)
    time.sleep(seconds)
    _count(tag, "done")


@castor_tool(idempotent=True, timeout_seconds=20)
def slow_copy(tag: str, seconds: float) -> str:
    """Idempotent and slow: a test kills its worker in the middle."""
    _run_slowly(tag, seconds)
    return f"copied {tag}"


@castor_tool(sensitive=["content"], timeout_seconds=20)
def slow_note(tag: str, content: str, seconds: float) -> str:
    """Slow, with a sensitive argument: a second copy of its task arrives while it runs."""
    _run_slowly(tag, seconds)
    return f"noted {tag} ({len(content)} characters)"


@castor_tool(destructive=True, timeout_seconds=20)
def slow_remove(tag: str, seconds: float) -> str:
    """Destructive and slow: a test kills its worker in the middle."""
    _run_slowly(tag, seconds)
    return f"removed {tag}"


@castor_tool(timeout_seconds=20)
def slow_write(tag: str, seconds: float) -> str:
    """Neither idempotent nor destructive, and slow: a second copy of its task arrives while it runs."""
    _run_slowly(tag, seconds)
    return f"wrote {tag}"


@castor_tool(timeout_seconds=1)
def stuck(seconds: float) -> str:
    """Runs past its one-second deadline."""
    time.sleep(seconds)
    return "woke up"


def noop() -> None:
    """The benchmark's tool."""
    return None


@castor_tool(retryable=True)
def bulky(tag: str, size: int) -> str:
    """Returns ``size`` characters (a result above the fleet's ``max_result_bytes`` when large)."""
    _count(tag, "done")
    return "x" * size


def explode(message: str) -> str:
    """Raises: the coordinator sees a RemoteToolError that keeps the type name."""
    raise ValueError(message)


@castor_tool(sensitive=["password"])
def leaky_login(user: str, password: str) -> str:
    """Raises with its sensitive argument in the message: what the task events show must hide it."""
    raise PermissionError(f"login of {user} with password {password} refused")


@castor_tool(retryable=True)
def flaky(tag: str) -> str:
    """Fails on its first start, succeeds on the retry."""
    starts = _redis().incr(f"{os.environ['CASTOR_TEST_PREFIX']}:count:{tag}:start")
    if starts == 1:
        raise ConnectionError("first try fails")
    return f"ok after {starts} starts"


@castor_tool(retryable=True, sensitive=["password"])
def flaky_login(tag: str, password: str) -> str:
    """Retryable with a sensitive argument: fails on its first start, so its retry is a new task message."""
    starts = _redis().incr(f"{os.environ['CASTOR_TEST_PREFIX']}:count:{tag}:start")
    if starts == 1:
        raise ConnectionError("first login fails")
    return f"logged in after {starts} starts"


@castor_tool(sensitive=["password"])
def sealed_login(user: str, creds: dict) -> dict[str, str]:
    """A nested sensitive value: answers with a digest of what it received (never the value)."""
    return {"user": user, "got": hashlib.sha256(str(creds.get("password")).encode()).hexdigest()}


@castor_tool(destructive=True, sensitive=["token"])
def sealed_rotate(target: str, options: dict) -> dict[str, str]:
    """Destructive, a sensitive value nested in a list: answers with a digest of what it received."""
    return {"target": target, "got": hashlib.sha256(str(options["auth"][0]["token"]).encode()).hexdigest()}
