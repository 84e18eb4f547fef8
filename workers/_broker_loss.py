"""A worker rides out a restart of its Redis broker instead of dying on it.

On a lost broker connection Celery (5.x) first ``collect()``s the connection, which drops its transport's
client, and then closes it; closing the channel restores the unacknowledged messages, and kombu's Redis
``QoS.restore_unacked`` reads the connection parameters from the client that is gone:
``AttributeError: 'NoneType' object has no attribute 'hostname'``. Celery takes that for an unrecoverable
error and stops the worker (every worker of the fleet, on one Redis restart), which then exited 0.

``patch_restore_unacked`` skips that restore when the channel's connection is gone: the messages stay in
the broker's unacked set, and come back after the visibility timeout if their worker never acks them.
That is the safe side anyway: the tasks in question are still running here, and restoring them at once
would hand a running step to another worker (which would wait for it: ``claim.lua``'s heartbeat).

This module is the only place Castor reaches into kombu's internals: it wraps three methods of
``kombu.transport.redis.QoS`` and reads its ``channel.connection.client`` and ``_delivered``. It was
written against the kombu versions in ``KOMBU_TESTED`` (``pyproject.toml`` pins the same upper bound);
``tests/celery/test_broker_loss.py`` fails when the installed kombu leaves that range or the wrapped
methods change their signatures, so a kombu upgrade is a decision, not a surprise.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger("castor.worker")
_PATCHED = "_castor_restore_patched"
KOMBU_TESTED = ((5, 3), (6, 0))  # kombu versions from the first up to (not including) the second


def patch_restore_unacked() -> None:
    """Make kombu's Redis ``QoS`` skip what it cannot do on a channel whose connection is gone (once):
    restoring its unacked messages, and acknowledging or rejecting one of them after a reconnect."""
    from kombu.transport import redis as transport
    from kombu.transport import virtual

    qos: Any = transport.QoS
    if getattr(qos, _PATCHED, False):
        return
    restore, ack, reject = qos.restore_unacked, qos.ack, qos.reject

    @functools.wraps(restore)
    def restore_unacked(self: Any, client: Any = None) -> Any:
        if client is None and _gone(self):
            log.warning("broker connection lost with %d task(s) unacknowledged: they stay in the broker's "
                        "unacked set (acknowledged when they finish, or back after the visibility timeout)",
                        len(self._delivered))
            return None
        return restore(self, client)

    def ack_or_reject(original: Any, what: str) -> Any:
        @functools.wraps(original)
        def run(self: Any, delivery_tag: Any, *args: Any, **kwargs: Any) -> Any:
            if not _gone(self):
                return original(self, delivery_tag, *args, **kwargs)
            # Its task finished on this worker and journaled its step: redelivered after the visibility
            # timeout, it is answered from the journal, never run again.
            log.warning("cannot %s task message %s: it came over a broker connection that was lost; it comes "
                        "back after the visibility timeout and is answered from the journal", what, delivery_tag)
            return virtual.QoS.ack(self, delivery_tag)  # forget it here all the same

        return run

    qos.restore_unacked = restore_unacked
    qos.ack = ack_or_reject(ack, "acknowledge")
    qos.reject = ack_or_reject(reject, "reject")
    setattr(qos, _PATCHED, True)


def _gone(qos: Any) -> bool:
    """Whether the QoS's channel lost its connection (kombu dropped its transport or the client)."""
    connection = getattr(qos.channel, "connection", None)
    return connection is None or getattr(connection, "client", None) is None
