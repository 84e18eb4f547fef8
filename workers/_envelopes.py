"""What kombu does with a message before any Castor check sees it: nothing a forger can use to stop a worker.

Two things happen to a message in the worker's consumer before Celery hands it to the task's strategy
(``castor.fleet.workers._poison``), where a malformed task is dead-lettered:

- **On a Redis broker, kombu decodes the envelope** (its JSON: headers, properties, base64 body) as it
  pops the message off the queue's list, and builds its message from it. A list item that is not such
  an envelope (``not json at all``, ``[1, 2]``, an envelope without properties or with a body that is not
  base64) raised there, in the consumer: the worker stopped ("Unrecoverable error") at the first one
  anyone pushed. Now such an item is dead-lettered (its size and digest) and the worker goes on; the item
  was popped already, so it is gone from the broker. So is an item too big for any task of the fleet
  (``envelope_limit``), before it is decoded: one of hundreds of megabytes would take gigabytes to
  decode, only to be refused for its size by the strategy.
- **On any broker, kombu decompresses a body whose ``compression`` header names a codec**, as the message
  is built: a few megabytes of zlib stand for gigabytes, which the worker would allocate. Castor never
  compresses a task; a compressed message is refused without being decompressed.

A message kombu cannot decode (compressed, or of a content type the worker does not accept) reaches
Celery's ``on_decode_error``, which logs and acknowledges it; it is also dead-lettered now, so ``castor
deadletters`` lists every message a worker refused.

Like ``_broker_loss``, this reaches into kombu (its Redis transport's ``loads``, ``Channel.Message`` and
``Transport._deliver``; ``kombu.message.decompress``) and Celery (``Consumer.on_decode_error``);
``tests/celery/test_broker_loss.py`` pins the kombu versions it was written for.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from castor.settings import Settings

from ._deadletter import DeadLetters, letter
from ._nesting import MAX_NESTING, TooDeep, nests_deeper

log = logging.getLogger("castor.worker")
_PATCHED = "_castor_envelopes_patched"

# (why, the body as it came, its headers, its content type): recorded as a dead letter of the pool
Refused = Callable[[str, "bytes | str", Any, Any], None]


# A task's body holds its arguments twice (as sent, and checked), JSON escaping may make each byte six,
# and the envelope holds the body in base64 (4/3): what no genuine task of the fleet comes near.
ENVELOPE_FACTOR = 16
ENVELOPE_OVERHEAD = 1024 * 1024


def envelope_limit(max_argument_bytes: int, max_request_bytes: int) -> int:
    """The largest broker list item a worker decodes, from the largest arguments a task may carry."""
    return ENVELOPE_FACTOR * max(max_argument_bytes, max_request_bytes) + ENVELOPE_OVERHEAD


class Undecodable:
    """A broker list item that is not JSON (what kombu's ``loads`` raised on), or too big to decode
    (``error`` None), kept to be dead-lettered."""

    def __init__(self, text: Any, error: Exception | None) -> None:
        self.text, self.error = text, error


def envelope_problem(message: Any) -> str | None:
    """Why ``message`` (a decoded list item of kombu's Redis transport) is no message envelope kombu can
    build a message from, or None."""
    if isinstance(message, Undecodable):
        if message.error is None:
            return f"the broker envelope is {len(message.text)} characters, too big for any task: not decoded"
        if isinstance(message.error, TooDeep):  # a prefork pool pickles its properties and headers: refused
            return f"the broker envelope {message.error}"
        return f"the broker envelope is not JSON ({type(message.error).__name__})"
    if not isinstance(message, dict):
        return f"the broker envelope is a {type(message).__name__}, not an object"
    properties = message.get("properties")
    if not isinstance(properties, dict):
        return "the broker envelope has no properties"
    tag = properties.get("delivery_tag")
    if not isinstance(tag, str | int) or isinstance(tag, bool):
        return "the broker envelope has no delivery tag"
    if not isinstance(properties.get("delivery_info"), dict | None):
        return "the broker envelope has delivery info that is not an object"
    if not isinstance(message.get("headers"), dict | None):
        return "the broker envelope has headers that are not an object"
    for name in ("content-type", "content-encoding"):
        if not isinstance(message.get(name), str | None):
            return f"the broker envelope has a {name} that is not text"
    if not isinstance(message.get("body"), str | None):
        return "the broker envelope has a body that is not text"
    return None  # a body that is not base64 fails as kombu builds the message (BrokenEnvelope), decoded once


class BrokenEnvelope(Exception):
    """kombu could not build a message from an envelope (a body that is not base64, ...)."""


def harden_redis_transport(refused: Refused, max_chars: int) -> None:
    """Make kombu's Redis transport dead-letter (``refused``) a list item it cannot build a message from,
    rather than raise in the consumer, and one of over ``max_chars`` without decoding it (once per process)."""
    from kombu.transport import redis

    transport: Any = redis  # its names are replaced below
    if getattr(transport, _PATCHED, False):
        return
    loads, deliver = transport.loads, transport.Transport._deliver

    @functools.wraps(loads)
    def tolerant_loads(text: Any) -> Any:
        if isinstance(text, str | bytes) and len(text) > max_chars:
            return Undecodable(text, None)
        try:
            decoded = loads(text)
        except Exception as exc:  # any: JSONDecodeError (a ValueError), RecursionError on JSON nested too deep
            return Undecodable(text, exc)
        if nests_deeper(text, decoded, MAX_NESTING):  # mostly told by counting brackets: base64 bodies have none
            return Undecodable(text, TooDeep(f"nests lists and objects deeper than {MAX_NESTING} levels"))
        return decoded

    class Guarded(transport.Channel.Message):
        """kombu's message, whose construction from a broken envelope raises ``BrokenEnvelope``."""

        def __init__(self, payload: Any, channel: Any = None, **more: Any) -> None:
            try:
                super().__init__(payload, channel=channel, **more)
            except Exception as exc:  # any: whatever an item anyone pushed holds, it is no message
                raise BrokenEnvelope(f"{type(exc).__name__}: {exc}") from exc

    @functools.wraps(deliver)
    def checked_deliver(self: Any, message: Any, queue: Any) -> Any:
        problem = envelope_problem(message)
        if problem is None:
            try:
                return deliver(self, message, queue)
            except BrokenEnvelope as exc:  # raised only where kombu builds the message, before it is taken
                problem = f"kombu cannot build a message from the broker envelope ({str(exc)[:200]})"
        raw = message.text if isinstance(message, Undecodable) else repr(message)
        refused(f"{problem} (queue {str(queue)[:200]!r})", raw if isinstance(raw, bytes | str) else repr(raw),
                None, None)
        return None

    transport.loads = tolerant_loads
    transport.Channel.Message = Guarded
    transport.Transport._deliver = checked_deliver
    setattr(transport, _PATCHED, True)


def refuse_compression() -> None:
    """Make kombu refuse, rather than decompress, a message body with a ``compression`` header."""
    import kombu.message

    message: Any = kombu.message

    def refused(body: Any, content_type: Any) -> Any:
        raise ValueError(f"compressed messages are refused ({str(content_type)[:80]!r}): a Castor task never is")

    message.decompress = refused  # the name kombu.message calls


def dead_letter_undecodable(refused: Refused) -> None:
    """Make Celery's consumer record (``refused``) a message it cannot decode, besides logging and
    acknowledging it as it does (once per process)."""
    from celery.worker.consumer import consumer

    cls: Any = consumer.Consumer
    if getattr(cls, _PATCHED, False):
        return
    original = cls.on_decode_error

    @functools.wraps(original)
    def on_decode_error(self: Any, message: Any, exc: Exception) -> Any:
        try:
            refused(f"cannot decode the message: {type(exc).__name__}: {exc}", getattr(message, "body", b""),
                    getattr(message, "headers", None), getattr(message, "content_type", None))
        except Exception:  # the record is extra: Celery's log line and acknowledgement must happen
            log.exception("a message that cannot be decoded was not dead-lettered")
        return original(self, message, exc)

    cls.on_decode_error = on_decode_error
    setattr(cls, _PATCHED, True)


def harden_consumer(settings: Settings, letters: DeadLetters) -> None:
    """All of the above, for this worker process (``letters``, its pool's dead letters, record the refusals).
    Every one changes kombu or Celery for the whole process: a worker calls it before it starts, nothing else."""

    def refused(why: str, body: bytes | str, headers: Any, content_type: Any) -> None:
        letters.record(letter(why, body, headers, content_type))

    limit = envelope_limit(settings.security.max_argument_bytes, settings.llm.max_request_bytes)
    harden_redis_transport(refused, limit)
    refuse_compression()
    dead_letter_undecodable(refused)
