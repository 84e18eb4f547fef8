"""A task message's body never reaches a worker's log whole.

Celery logs the whole body of a task it cannot run (``Received unregistered task of type ...`` for a
task of another pool's tool, ``Received invalid task message`` for a malformed one): its arguments, the
encrypted sensitive ones and the authorization token. The filter installed on Celery's consumer logger
replaces that body with its size and a digest (enough to match it with a message on the broker).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

CONSUMER_LOGGER = "celery.worker.consumer.consumer"


class WithholdBodies(logging.Filter):
    """Replaces the message body in Celery's unknown/invalid task errors with its size and digest."""

    def __init__(self) -> None:
        super().__init__()
        from celery.worker.consumer.consumer import INVALID_TASK_ERROR, UNKNOWN_TASK_ERROR

        self._formats = (UNKNOWN_TASK_ERROR, INVALID_TASK_ERROR)

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record, its body (the second argument of both formats) withheld."""
        args = record.args
        if record.msg in self._formats and isinstance(args, tuple) and len(args) >= 2:
            record.args = (args[0], withheld(args[1]), *args[2:])
        return True


def withheld(body: Any) -> str:
    """What the log shows of a message body: its size and the start of its SHA-256."""
    data = body if isinstance(body, bytes) else str(body).encode(errors="replace")
    return f"<body withheld: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}>"


def withhold_bodies() -> None:
    """Install the filter on Celery's consumer logger (once per process)."""
    logger = logging.getLogger(CONSUMER_LOGGER)
    if not any(isinstance(f, WithholdBodies) for f in logger.filters):
        logger.addFilter(WithholdBodies())
