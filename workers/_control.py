"""Remote control of a worker over the broker: questions answered, orders refused.

Celery's workers obey control messages broadcast on the broker's ``pidbox`` exchange: ``shutdown``
(the worker exits 0, which a supervisor that restarts on failure leaves down), ``cancel_consumer`` (it
stops taking its queue's tasks and stays up, looking healthy), ``revoke`` with ``terminate`` (the child
running a tool is killed mid-call), ``pool_restart``, ``rate_limit``, ``time_limit``, ``autoscale``... A
control message carries no signature, so anyone who can write to the broker could stop every pool of a
fleet. Castor's workers keep the questions (``ping``, ``active_queues``, ``stats``, ``conf``, the task
lists: what ``castor worker --ping`` and Flower's worker pages ask) and answer every other command with a refusal,
logged on one line. ``hello`` is refused too: Celery files it under the questions, but it merges the
asker's revoked task ids into the worker's, and a revoked task is dropped unrun. ``enable_events`` and
``heartbeat``, which Flower sends, are answered as done (events are on from the start) and unlogged; a
refusal is logged once per command every few minutes, not once per message.

A control message may also name its recipients by a pattern, which kombu matches against the worker's
name as a regular expression (``matcher="pcre"``), in the thread that takes the pool's tasks: one forged
``((.*)*)*X`` held it for good. A message with a pattern, or that is not a mapping, is dropped unread.

For the same reason a worker starts without ``mingle`` (at start, it asks the others for their revoked ids
and merges the replies: a forged reply would drop genuine tasks) and without ``gossip`` (it acts on other
workers' events, which anyone can publish). To stop or resize a pool, stop or start its processes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from kombu import pidbox

log = logging.getLogger("castor.worker")

ANSWERED = frozenset({
    "ping", "clock", "active_queues", "stats", "query_task", "conf", "dump_conf",  # conf: Celery censors secrets
    "registered", "dump_tasks", "active", "dump_active", "reserved", "dump_reserved",
    "scheduled", "dump_schedule", "revoked", "dump_revoked",
})
"""The control commands a worker answers: questions whose answer changes nothing on the worker."""


class Questions(dict[str, Callable[..., Any]]):
    """Celery's table of control handlers, with every command outside ``ANSWERED`` (and any name it does
    not know) answered by a refusal."""

    def __missing__(self, name: Any) -> Callable[..., Any]:
        return _refusal(name)


ALREADY_ON = frozenset({"enable_events", "heartbeat"})
"""What Flower sends every worker (``enable_events`` every few seconds, ``heartbeat`` when it starts): a
worker's events and heartbeats are on from its start, so these are answered as done without running
Celery's handlers (which would change nothing, or undo what a forged ``disable_events`` had changed: that
one is refused)."""

REPEAT_EVERY = 300.0  # seconds: a refused command's refusal is logged again at most this often
_said: dict[str, float] = {}


def _refusal(name: Any) -> Callable[..., Any]:
    shown = str(name).encode("unicode_escape", "replace").decode()[:80]  # a forged name, printed escaped
    if name in ALREADY_ON:
        return lambda state, **arguments: {"ok": "task events are on"}

    def refuse(state: Any, **arguments: Any) -> dict[str, str]:
        now = time.monotonic()
        last = _said.get(shown)
        if last is None or now - last >= REPEAT_EVERY:  # one line, not one per message of a sender that repeats
            if len(_said) >= 1024:  # a flood of made-up names: forget the oldest
                _said.pop(next(iter(_said)))
            _said[shown] = now
            log.warning("remote control command %r refused: a Castor worker takes no orders over the broker "
                        "(said once per %gs per command)", shown, REPEAT_EVERY)
        return {"error": f"refused: castor workers answer only {', '.join(sorted(ANSWERED))}"}

    return refuse


def answering_only(handlers: Mapping[str, Callable[..., Any]]) -> Questions:
    """``handlers`` (Celery's ``Panel.data``) cut down to the questions of ``ANSWERED``."""
    return Questions({name: handler for name, handler in handlers.items() if name in ANSWERED})


class Recipient(pidbox.Node):
    """A worker's end of the control mailbox that drops a message naming its recipients by a pattern (a
    regular expression run in the worker's consumer) or that is not a mapping."""

    def handle_message(self, body: Any, message: Any = None) -> Any:
        """Dispatch ``body`` as kombu does, unless it holds a pattern or is no mapping."""
        if not isinstance(body, dict) or body.get("pattern") is not None or body.get("matcher") is not None:
            log.warning("remote control message dropped: it names its recipients by a pattern, or is no mapping")
            return None
        return super().handle_message(body, message)

    dispatch_from_message = handle_message


def restrict_remote_control(app: Any) -> None:
    """Make the workers of ``app`` (this process's) answer only ``ANSWERED`` and drop pattern-addressed
    messages (before the worker starts: its pidbox reads the table and makes its node then)."""
    from celery.worker import control

    if not isinstance(control.Panel.data, Questions):
        control.Panel.data = answering_only(control.Panel.data)
    app.control.mailbox.node_cls = Recipient
