"""Tasks that ask to run later (an ``eta`` header): held by the worker only when they are Castor's retries.

A Celery worker keeps a message with an ``eta`` in its own memory until that time (and raises its
prefetch for it, so it takes the next one too), and only then runs the task, which is where a Castor
worker checks the coordinator's token. Anyone who could write to the broker could so fill a worker's
memory with forged tasks due in a year, never refused: 2,000 of them were all held, none dead-lettered.

The only tasks of Castor's with an ``eta`` are a worker's own retries of a failed call (``self.retry``
with the backoff's countdown: the same signed fields, numbered by the count of the call's retries its
workers keep in Redis, which the runtime checks again as the retry comes due). So a message with an
``eta`` is taken only if, checked on receipt, it is one: its fields carry the token the fleet's secret
signs (without a secret, an insecure development fleet, this is not checked); it is due within the
longest backoff (``[tools] retry_backoff * 2**(max_retries - 1)``, plus a minute for clocks); its
``retries`` count is one the settings allow; and no other message of this worker waits for the same
retry (run, step, attempt, count), so a captured genuine retry replayed many times is held once. Any
other is dead-lettered at once, as a malformed message is.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from castor.fleet.wire import Malformed, decode, verify

CLOCK_SLACK = 60.0  # seconds an eta may lie past the longest backoff (clocks of two hosts differ)


class HeldRetries:
    """Whether a message with an ``eta`` is a retry this worker may hold (``problem``)."""

    def __init__(self, secret: str | None, retry_backoff: float, max_retries: int) -> None:
        self.secret = secret or None
        self.max_retries = max_retries
        self.longest = retry_backoff * 2 ** max(max_retries - 1, 0) + CLOCK_SLACK

    def problem(self, headers: dict[str, Any], kwargs: Any, scheduled: Any = None) -> str | None:
        """Why a message with these ``headers`` and task ``kwargs`` must not be held, or None (also None for a
        message without an ``eta``). ``scheduled``: the requests the worker holds for their eta (Celery's)."""
        eta = headers.get("eta")
        if eta is None:
            return None
        due = _timestamp(eta)
        if due is None:
            return "header 'eta' is not an ISO 8601 time"
        if due - time.time() > self.longest:
            return f"eta is {due - time.time():.0f} s ahead, past the longest retry backoff ({self.longest:g} s)"
        try:
            job = decode(kwargs)
        except Malformed as exc:
            return f"a task to run later, malformed: {exc.reason}"
        if self.secret is not None and not verify(self.secret, job):
            return "a task to run later that no coordinator signed (only a worker's retries run later)"
        retries = headers.get("retries") or 0
        if not 0 < retries <= self.max_retries:
            return f"a task to run later whose retries count {retries} is not a retry the settings allow"
        if scheduled is not None and any(_same_retry(held, job, retries) for held in list(scheduled)):
            return "a copy of a retry this worker holds already"
        return None


def scheduled_requests() -> Any:
    """The requests the worker holds for their eta (Celery's worker state; cleared when its connection is)."""
    from celery.worker import state

    return state.scheduled_requests


def _same_retry(request: Any, job: Any, retries: int) -> bool:
    try:
        kwargs = request.kwargs
        held_retries = request.request_dict.get("retries") or 0
    except Exception:  # a request Celery could not decode cannot be the same retry
        return False
    return (
        isinstance(kwargs, dict) and held_retries == retries and kwargs.get("run_id") == job.run_id
        and kwargs.get("step") == job.step and kwargs.get("attempt") == job.attempt
    )


def _timestamp(eta: Any) -> float | None:
    if not isinstance(eta, str):
        return None
    try:
        when = datetime.fromisoformat(eta)
    except ValueError:
        return None
    if when.tzinfo is None:  # Celery sends aware times (enable_utc); a naive one is read as UTC
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
