"""The webhook: one POST per new pending call, in a body a chat app's incoming webhook accepts.

The body is JSON with ``text`` (what a chat shows: the run, the tool, a link to the approval page) and
``castor`` (the same as data). ``X-Castor-Signature: sha256=<hex>`` is the HMAC-SHA256 of
``<timestamp>.<body>`` under ``[console.webhook] secret``, with the timestamp in ``X-Castor-Timestamp``,
so a receiver can check the sender and refuse replays. A failed POST (no answer, or not 2xx) is retried
``retries`` times, ``backoff`` seconds before the first retry, doubled each time. Deliveries run in the
background: a slow receiver never holds up the console.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from castor.settings._console import WebhookSection

log = logging.getLogger("castor.console")
SIGNATURE_HEADER = "X-Castor-Signature"
TIMESTAMP_HEADER = "X-Castor-Timestamp"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: the HMAC-SHA256 of ``<timestamp>.<body>``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def message(row: dict[str, Any], base_url: str) -> dict[str, Any]:
    """The body for a new pending call (``row`` as ``Console.approvals`` lists it; arguments masked)."""
    link = f"{base_url.rstrip('/')}/approvals#{quote(row['pid'], safe='')}"
    arguments = json.dumps(row["arguments"], default=str)
    if len(arguments) > 300:
        arguments = arguments[:297] + "..."
    text = f"Castor: run {row['pid']} waits for approval of step {row['step']}: {row['tool']}({arguments}) <{link}>"
    data = {key: row[key] for key in ("pid", "step", "tool", "arguments", "reason", "agent")}
    return {"text": text, "castor": {**data, "url": link}}


class Webhook:
    """Sends the messages; ``sent`` counts deliveries that got a 2xx (for tests and logs)."""

    def __init__(self, config: WebhookSection, base_url: str, timeout: float = 10.0) -> None:
        self.config = config
        self.base_url = base_url
        self.timeout = timeout
        self.sent = 0
        self._tasks: set[asyncio.Task[bool]] = set()

    async def notify(self, row: dict[str, Any]) -> None:
        """Deliver in the background (``drain`` waits for every delivery under way)."""
        task = asyncio.create_task(self.deliver(message(row, self.base_url)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the deliveries under way."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def deliver(self, body: dict[str, Any]) -> bool:
        """POST ``body``, retrying with backoff; True once a 2xx came back."""
        data = json.dumps(body).encode()
        delay = self.config.backoff
        for attempt in range(self.config.retries + 1):
            problem = await asyncio.to_thread(self._post, data)
            if problem is None:
                self.sent += 1
                return True
            if attempt == self.config.retries:
                log.warning("webhook: giving up on %s after %d tries: %s", body["castor"]["pid"], attempt + 1, problem)
                return False
            log.info("webhook: %s; retrying in %gs", problem, delay)
            await asyncio.sleep(delay)
            delay *= 2
        return False

    def _post(self, data: bytes) -> str | None:
        """One POST; None on a 2xx, else what went wrong."""
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "User-Agent": "castor-console", TIMESTAMP_HEADER: timestamp}
        if self.config.secret:
            headers[SIGNATURE_HEADER] = signature(self.config.secret, timestamp, data)
        request = urllib.request.Request(self.config.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # http(s) only
                status = response.status
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if 200 <= status < 300 else f"HTTP {status}"
