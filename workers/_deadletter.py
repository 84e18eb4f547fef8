"""Dead letters: what a pool's workers refused without answering anyone, kept in Redis per pool.

A message a worker cannot read as a Castor task (a body that is not Celery's ``[args, kwargs, embed]``,
bad headers, an undecodable body, another content type), or a task it cannot authenticate, names no
coordinator the worker may trust: it is acknowledged (never redelivered, so it cannot kill the next
worker too), logged in one line, and recorded here — why, how many bytes, their sha256, and what the
headers said (a few of them, cut short) — never the body, which may be huge or hold secrets.

The list ``keys.dead_letters(prefix, pool)`` keeps the newest ``MAX_LETTERS``; ``castor deadletters``
lists and purges it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from castor.backends.redis import keys

log = logging.getLogger("castor.worker")
MAX_LETTERS = 1000  # per pool: a flood of forged messages costs Redis at most this many short entries
SHOWN_HEADERS = ("id", "task", "castor_run", "castor_step", "retries", "origin")
MAX_SHOWN = 200  # characters of a header value, or of the reason, in a letter


def letter(reason: str, body: bytes | str | None, headers: Any = None, content_type: Any = None) -> dict[str, Any]:
    """A dead letter for a message whose body is ``body`` (its bytes as they came, or the task's JSON)."""
    raw = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else bytes(body or b"")
    entry: dict[str, Any] = {
        "at": time.time(), "reason": reason[:MAX_SHOWN * 2], "size": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }
    if content_type is not None:
        entry["content_type"] = _short(content_type)
    if isinstance(headers, dict):
        entry["headers"] = {name: _short(headers[name]) for name in SHOWN_HEADERS if name in headers}
    elif headers is not None:
        entry["headers"] = f"not a mapping: {type(headers).__name__}"
    return entry


def describe(entry: dict[str, Any]) -> str:
    """One log line's worth of a letter: never a body."""
    shown = entry.get("headers")
    task = shown.get("task", "?") if isinstance(shown, dict) else "?"
    task_id = shown.get("id", "?") if isinstance(shown, dict) else "?"
    return f"{task!r} [{task_id!r}] ({entry['size']} bytes, sha256 {entry['sha256'][:16]}): {entry['reason']!r}"


def _short(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    return text if len(text) <= MAX_SHOWN else f"{text[:MAX_SHOWN]}... ({len(text)} characters)"


def _encoded(entry: dict[str, Any]) -> str:
    return json.dumps(entry, separators=(",", ":"))


class DeadLetters:
    """A pool's dead-letter list, written from the worker's consumer (a synchronous client, made on first
    use). A letter Redis will not take is logged and dropped: the worker goes on serving either way."""

    def __init__(self, url: str, prefix: str, pool: str) -> None:
        self.key = keys.dead_letters(prefix, pool)
        self._url = url
        self._client: Any = None

    def record(self, entry: dict[str, Any]) -> None:
        """Log the refusal and push ``entry`` (keeping the newest ``MAX_LETTERS``)."""
        log.error("refused message %s; dead-lettered", describe(entry))
        try:
            if self._client is None:
                from castor.backends.redis import redis_client

                self._client = redis_client(self._url, sync=True, socket_timeout=5.0)
            pipe = self._client.pipeline(transaction=False)
            pipe.lpush(self.key, _encoded(entry)).ltrim(self.key, 0, MAX_LETTERS - 1).execute()
        except Exception as exc:  # Redis away: the log line is the record
            log.error("dead letter not recorded in %s: %s: %s", self.key, type(exc).__name__, exc)


async def record_async(client: Any, key: str, entry: dict[str, Any]) -> None:
    """``DeadLetters.record`` on an asyncio client (the runtime's, on the worker's loop)."""
    log.error("refused task %s; dead-lettered", describe(entry))
    try:
        async with client.pipeline(transaction=False) as pipe:
            await pipe.lpush(key, _encoded(entry)).ltrim(key, 0, MAX_LETTERS - 1).execute()
    except Exception as exc:
        log.error("dead letter not recorded in %s: %s: %s", key, type(exc).__name__, exc)
