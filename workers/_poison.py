"""Poison messages: a message on a pool's queue that Celery's consumer cannot turn into a request.

Celery's default strategy builds a ``Request`` in the worker's main process, which unpacks the body as
``[args, kwargs, embed]``: a body that is valid JSON of another shape (``"just a string"``, ``[1, 2]``,
``{}``) raises a ``ValueError`` that no handler catches, the worker stops (exit code 0) and the broker
restores the message for the next worker of the pool to die of. Every tool task therefore runs under
``strategy`` (its ``Strategy``, Celery's extension point for this): it checks what the request would
trust — the headers, the content type, the body's shape — and dead-letters and acknowledges a message
that fails, as it does one the default strategy raises on; the worker goes on with the next message.

A message asking to run later (an ``eta``) is held only if it is one of Castor's retries (``_eta``).

A refused message that carries a task id is also announced in the task events (``task-rejected`` with the
reason), so Flower lists it as ``REJECTED`` with why, as it does a task the
worker refuses once it runs (``castor.fleet.workers._shown``).

The body is decoded here no more than before: ``Request`` decodes it in this process anyway (kombu keeps
the decoded payload). A body or a header nested deeper than ``MAX_NESTING`` levels is refused too: a
prefork pool pickles each request (its headers with it) for its child, and one nested near Python's
recursion limit (about 950 levels, still decodable) raised ``RecursionError`` while it was pickled, after
which the pool took no more tasks.
"""

from __future__ import annotations

from typing import Any

from ._deadletter import DeadLetters, letter
from ._eta import HeldRetries, scheduled_requests
from ._nesting import MAX_NESTING, headers_nest_deeper, nests_deeper

CONTENT_TYPE = "application/json"
_OPTIONAL_TEXT = ("eta", "expires", "shadow", "root_id", "parent_id", "group", "argsrepr", "kwargsrepr")


def strategy(task: Any, app: Any, consumer: Any, **options: Any) -> Any:
    """Celery's default strategy for ``task``, behind the checks of ``problem``."""
    from celery.worker.strategy import default

    handler = default(task, app, consumer, **options)
    letters: DeadLetters = task.dead_letters
    retries: HeldRetries | None = getattr(task, "held_retries", None)
    passing = tuple(consumer.connection_errors) + tuple(consumer.channel_errors)  # the consumer reconnects

    def guarded(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **more: Any) -> Any:
        reason = problem(message, body)
        if reason is None and retries is not None and message.headers.get("eta") is not None:
            reason = retries.problem(message.headers, message.payload[1], scheduled_requests())  # _eta
        if reason is None:
            try:
                return handler(message, body, ack, reject, callbacks, **more)
            except passing:
                raise
            except Exception as exc:  # anything else would stop the worker and poison its successors
                reason = f"Celery cannot take it: {type(exc).__name__}: {exc}"
        refuse(message, reason, letters)
        announce(consumer, message, reason)
        return None

    return guarded


def refuse(message: Any, reason: str, letters: DeadLetters) -> None:
    """Record ``message`` as a dead letter and acknowledge it (never redelivered)."""
    headers = getattr(message, "headers", None)
    letters.record(letter(reason, getattr(message, "body", b""), headers, getattr(message, "content_type", None)))
    if not message.acknowledged:
        message.ack()


def announce(consumer: Any, message: Any, reason: str) -> None:
    """Tell the task events (Flower) that the message with this task id was rejected, and why."""
    dispatcher = getattr(consumer, "event_dispatcher", None)
    headers = getattr(message, "headers", None)
    if dispatcher is None or not dispatcher.enabled or not isinstance(headers, dict):
        return
    task_id, name = headers.get("id"), headers.get("task")
    if not isinstance(task_id, str) or not 0 < len(task_id) <= 200:
        return
    name = name if isinstance(name, str) else None
    try:
        # one event: after a task-failed, a task-rejected would not change the state (FAILURE is final)
        dispatcher.send("task-rejected", uuid=task_id, name=(name or "?")[:200], requeue=False,
                        exception=f"Rejected({reason!r})")
    except Exception:  # events are best effort: the dead letter is the record
        return


def problem(message: Any, body: Any) -> str | None:
    """Why ``message`` is no Castor task message (Celery protocol 2, JSON), or None if it is one."""
    headers = message.headers
    if body is not None or not isinstance(headers, dict):
        return "not a Celery protocol 2 message (its headers must say the task)"
    wrong = _header_problem(headers)
    if wrong is not None:
        return wrong
    if message.content_type != CONTENT_TYPE:
        return f"content type {str(message.content_type)[:80]!r} is not {CONTENT_TYPE}"
    try:
        payload = message.payload
    except Exception as exc:
        return f"cannot decode the body: {type(exc).__name__}"
    if not isinstance(payload, list | tuple) or len(payload) != 3:
        return f"the body is {_shape(payload)}, not [args, kwargs, embed]"
    args, kwargs, embed = payload
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        return f"the body is [{_shape(args)}, {_shape(kwargs)}, ...], not [args, kwargs, embed]"
    if embed is not None and (not isinstance(embed, dict) or any(embed.values())):
        return "the body asks for callbacks, errbacks, a chain or a chord: a tool task has none"
    if nests_deeper(message.body, payload, MAX_NESTING):
        return f"the body nests lists and objects deeper than {MAX_NESTING} levels: no Castor task does"
    return None


def _header_problem(headers: dict[str, Any]) -> str | None:
    """What is wrong with a task message's headers, if anything (Celery reads them before any task runs)."""
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not task_id or len(task_id) > 200:
        return "header 'id' is missing or not a task id"
    limits = headers.get("timelimit")
    if limits is not None and not (isinstance(limits, list | tuple) and len(limits) == 2):
        return "header 'timelimit' is not [hard, soft]"
    if limits is not None and any(limit is not None for limit in limits):
        # Celery runs a message under the limits it asks for, over the task's own: a broker writer's copy of a
        # signed task could have its tool killed mid-call, or let it run past its deadline on a prefork pool
        # (a call the coordinator then reports in doubt may run twice). Castor's tasks never ask for limits.
        return "header 'timelimit' asks for time limits of its own: a tool runs under its worker's ([tools] timeouts)"
    retries = headers.get("retries")
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or retries < 0):
        return "header 'retries' is not a count"
    for name in _OPTIONAL_TEXT:
        if not isinstance(headers.get(name), str | None):
            return f"header {name!r} is not text"
    # Celery pickles the headers with the request for a prefork child, as it does the body (``nests_deeper``).
    if headers_nest_deeper(headers, MAX_NESTING):
        return f"a header nests lists and objects deeper than {MAX_NESTING} levels: no Castor task's does"
    shadow = headers.get("shadow")
    if shadow and shadow != headers.get("task"):
        # Celery logs and reports a task under the name its ``shadow`` header gives: a copy of a signed task
        # could run one tool while the worker's log and Flower name another. Castor's tasks are never shadowed.
        return "header 'shadow' names the task otherwise in the worker's log and Flower"
    return None


def _shape(value: Any) -> str:
    if isinstance(value, list | tuple):
        return f"an array of {len(value)}"
    return "an object" if isinstance(value, dict) else f"a {type(value).__name__}"
