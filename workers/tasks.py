"""The tool task: one Celery task per tool, named ``castor.tool.<tool>``, and nothing but a thin edge.

It hands its JSON keyword arguments to ``WorkerRuntime.handle``; results travel through the journal and
the reply stream. What Celery sees is only a redacted account of the call's end (``castor.fleet.workers._shown``): a
short summary of the result, ``ToolCallFailed`` for a failure, ``TaskRefused`` for a refusal, so Flower
lists a failed call or a refused task as ``FAILURE`` with the (redacted) reason. A task whose name
no tool of this worker has is refused by Celery; the ``task_unknown`` signal records the refusal, and
Celery's log of it shows the message body's size and digest, not the body (``_logfilter``). A message
Celery cannot take as a task (``_poison``) or rejects is dead-lettered (``_deadletter``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery.exceptions import Retry

from castor.fleet.wire import ERROR, IN_DOUBT, REFUSED, TIMEOUT, task_name

from ._deadletter import DeadLetters, letter
from ._eta import HeldRetries
from ._logfilter import withhold_bodies
from ._scripts import Delivery
from ._shown import TaskRefused, ToolCallFailed
from .runtime import Outcome, WorkerRuntime

# Past the soft limit the tool gets this long to unwind before its process is killed.
HARD_LIMIT_GRACE = 5.0
# An async tool is timed by the worker itself (``WorkerRuntime._call``), which then reports the timeout.
# Celery's soft limit, started with the task a moment before that timer, would fire at the same instant
# and could cut the report short (no reply: the coordinator would find the step in doubt). For an async
# tool it is a backstop this much later; a synchronous tool has no other timer, so its soft limit is its timeout.
ASYNC_SOFT_LIMIT_LEAD = 1.0


def soft_limit(timeout: float, is_async: bool) -> float:
    """Celery's soft time limit for a tool of ``timeout`` seconds."""
    return timeout + ASYNC_SOFT_LIMIT_LEAD if is_async else timeout


def register_tools(app: Any, runtime: WorkerRuntime, letters: DeadLetters | None = None) -> list[str]:
    """Register a task for every tool of ``runtime``'s registry; returns the task names. ``letters``: the
    pool's dead letters (the worker's one list, shared with ``harden_consumer``), else a list of its own."""
    names = []
    settings = runtime.settings
    if letters is None:
        letters = DeadLetters(settings.redis.url, settings.redis.prefix, runtime.pool)
    # A message with an eta is held only if it is a retry of ours (_eta): one check for every tool's task.
    retries = HeldRetries(settings.security.secret, settings.tools.retry_backoff, settings.tools.max_retries)
    for spec in runtime.registry:
        policy = runtime.policy(spec)
        names.append(_register(app, runtime, spec.name, policy.timeout, letters, retries, spec.is_async))
    _drop_builtins(app)
    _watch_unknown(app, runtime, letters)
    return names


def _drop_builtins(app: Any) -> None:
    """Unregister Celery's own tasks (``celery.chord_unlock``, ``celery.map``, ``celery.group``...): a worker
    of Castor's runs tool tasks only, and these ran under Celery's default strategy, which a forged body
    of the wrong shape stops (the worker exited 0; the broker gave the message to the next worker of the
    pool, which died of it too). Named in a message now, they are unknown tasks: dead-lettered."""
    app.finalize(auto=True)  # Celery adds its own tasks when the app is finalized
    for name in [name for name in app.tasks if name.startswith("celery.")]:
        app.tasks.unregister(name)


def _register(
    app: Any, runtime: WorkerRuntime, tool: str, timeout: float, letters: DeadLetters, retries: HeldRetries,
    is_async: bool = False,
) -> str:
    name = task_name(tool)

    def run(self: Any, *args: Any, **kwargs: Any) -> str:
        if args:  # positional arguments are not part of the protocol: refuse them with the rest
            kwargs = {"positional": list(args), **kwargs}
        outcome = runtime.handle(kwargs, self.name, self.request.retries, _delivery(self.request))
        if outcome.retry_in is not None:
            # Celery numbers the retried message from the request's count, which the broker's writer set: the
            # count Redis keeps goes out instead. It builds the message from the request, which has lost the
            # coordinator's kwargsrepr: without ours, events and Flower would show the raw arguments and the token.
            self.request.retries = outcome.retries - 1
            try:
                self.retry(countdown=outcome.retry_in, max_retries=None, argsrepr="()", kwargsrepr=outcome.shown)
            except Retry:
                raise  # sent: the task ends as retried
            except Exception as exc:  # the broker away past its publish retries: nothing will run the call again
                if outcome.unsent is None:
                    raise
                outcome = outcome.unsent(f"its retry could not be sent, {type(exc).__name__}: {exc}")
        return shown_end(outcome)

    app.task(
        run,
        name=name,
        shared=False,  # this app only: another app in the process must not pick it up
        lazy=False,
        bind=True,
        typing=False,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        throws=(ToolCallFailed,),  # a tool's failure is the tool's, not the worker's: logged without a traceback
        max_retries=None,  # [tools] max_retries decides, counted in Redis (Celery's own default of 3 stopped a 4th)
        soft_time_limit=soft_limit(timeout, is_async),
        time_limit=soft_limit(timeout, is_async) + HARD_LIMIT_GRACE,
        # a malformed message is dead-lettered, never the worker's end
        Strategy="castor.fleet.workers._poison:strategy",
        dead_letters=letters,
        held_retries=retries,
    )
    return name


def shown_end(outcome: Outcome) -> str:
    """The task's return value for Celery, or the exception that ends it (the journal and the reply are
    written already): a refusal or a failure fails the task (its message is acknowledged all the same)."""
    if outcome.status == REFUSED:
        raise TaskRefused(outcome.detail)
    if outcome.status in (ERROR, TIMEOUT, IN_DOUBT):
        raise ToolCallFailed(outcome.detail)
    return outcome.detail


def _delivery(request: Any) -> Delivery:
    """The message a task runs from: a Celery retry is a new message under the same task id."""
    info = request.delivery_info or {}
    return Delivery(f"{request.id}/{request.retries or 0}", bool(info.get("redelivered")), _expiry(request.expires))


def _expiry(expires: Any) -> float | None:
    """A task's ``expires`` (Celery's ISO 8601 text, or a datetime) in seconds since the epoch; None if absent
    or unreadable (the signed bound from ``issued`` still holds: ``_claiming.await_running``)."""
    if isinstance(expires, str):
        try:
            expires = datetime.fromisoformat(expires)
        except ValueError:
            return None
    if isinstance(expires, datetime):
        return (expires if expires.tzinfo else expires.replace(tzinfo=UTC)).timestamp()
    return None


def _watch_unknown(app: Any, runtime: WorkerRuntime, letters: DeadLetters) -> None:
    from celery import signals

    def on_unknown(sender: Any = None, message: Any = None, name: str = "", **_: Any) -> None:
        try:
            body = message.decode() if message is not None else None
        except Exception as exc:
            if message is not None:
                letters.record(letter(f"unknown task {name[:200]!r}, undecodable: {type(exc).__name__}",
                                      message.body, message.headers, message.content_type))
            return
        kwargs = body[1] if isinstance(body, list | tuple) and len(body) == 3 else None
        headers = message.headers if message is not None and isinstance(message.headers, dict) else {}
        runtime.refuse_unknown(kwargs, name, str(headers.get("id", ""))[:200])

    def on_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
        # Celery rejected it (no task header, an invalid request): it has dropped it, we keep its trace.
        if message is not None:
            reason = f"rejected by Celery: {type(exc).__name__}: {exc}" if exc else "rejected by Celery: unknown format"
            letters.record(letter(reason, message.body, message.headers, message.content_type))

    signals.task_unknown.connect(on_unknown, weak=False)
    signals.task_rejected.connect(on_rejected, weak=False)
    withhold_bodies()  # Celery logs an unknown task's whole body: arguments and token
