"""What crosses the broker and the reply stream between a coordinator and a worker: JSON only.

A tool task is named ``castor.tool.<tool>`` and carries a ``ToolCall`` (``castor.seams``): one keyword
argument per field of it, under the same names, plus the reply stream and a token. ``encode`` is the one
place a call becomes a task, ``decode`` the one place a task becomes a call again (a ``Job``: the call as
the worker received it). The ``token`` is an HMAC-SHA256, under the fleet's secret, over every other
field, canonical JSON: a worker runs nothing a coordinator did not sign (only in an insecure development
fleet without a secret, a gated tool's unsigned call that a human approved in Redis), and replies to no
stream a coordinator did not name. A worker refuses a task with a field it does not know or without one it needs,
so the coordinators and workers of one fleet run the same Castor version.

A reply is a flat stream entry naming the Celery task id it answers (a coordinator takes a reply only
for the task it published) and, with a secret, signed over all its fields (``reply_signature``): a reply
that anyone else wrote to the stream, or that answers a forged task, resolves nothing.

A task says when its coordinator signed it (``issued``, seconds since the epoch, under the token): a worker
refuses a signed task older than ``[security] task_max_age`` (a week, the store's default retention), so a
task read off the broker and sent again once its run's records are gone (retention expired them, and with
them what answers a replay) runs nothing. A coordinator that sends a step again signs it anew.

Sensitive values travel encrypted in ``checked`` (what the tool runs with; ``castor._sealing``) and as
keyed digests in ``arguments`` (what the journal's request keeps); the token covers them as sent. The
worker journals ``job.record(result)``, the record the kernel builds from the same call, and its reply
says when the call finished, so the coordinator's copy of the record is the journaled one.

Part of the fleet's supported API (``castor.fleet``).
"""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from castor._canonical import canonical
from castor._redact import redact
from castor._secret import digests_match
from castor.seams import ToolCall

TASK_PREFIX = "castor.tool."

# Reply statuses: what became of a task.
OK, ERROR, REFUSED, IN_DOUBT, TIMEOUT = "ok", "error", "refused", "in_doubt", "timeout"


def task_name(tool: str) -> str:
    """The Celery task name of a tool, as Flower shows it."""
    return f"{TASK_PREFIX}{tool}"


@dataclass(slots=True)
class Job(ToolCall):
    """A ``ToolCall`` as a worker received it: the call (``checked`` as sent: its sensitive values
    encrypted), the reply stream it names, its token, and the Celery task id it came as (set by the
    worker from the message, never a task argument)."""

    _: KW_ONLY
    reply_to: str = ""
    code: str = ""
    issued: float = 0.0  # when the coordinator signed it (time.time()); the token covers it
    token: str | None = None
    task_id: str = field(default="", compare=False)

    def kwargs(self) -> dict[str, Any]:
        """The task's keyword arguments, as a coordinator sent them (the token as the job carries it)."""
        kwargs = _fields(self, self.reply_to, self.checked, self.code, self.issued)
        kwargs["token"] = self.token
        return kwargs


# A task's keyword arguments: the ToolCall's fields, the reply stream and the token; the types a worker takes.
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "run_id": str, "step": int, "tool_name": str, "arguments": dict, "checked": dict, "attempt": int,
    "decided_by": (str, type(None)), "was_hitl": bool, "needs_review": bool, "review_reason": (str, type(None)),
    "charged": dict, "usage": (dict, type(None)), "reply_to": str, "code": str, "issued": (int, float),
    "token": (str, type(None)),
}
_AMOUNTS = ("charged", "usage")  # {resource: number} mappings, journaled as they come


def _fields(
    call: ToolCall, reply_to: str, checked: dict[str, Any] | None, code: str, issued: float
) -> dict[str, Any]:
    """Every field of a task but its token (shallow: serialized right away, never mutated)."""
    charged = call.charged
    return {
        "run_id": call.run_id, "step": call.step, "tool_name": call.tool_name,
        "arguments": call.journaled_arguments(),
        "checked": (call.checked if call.checked is not None else call.arguments) if checked is None else checked,
        "attempt": call.attempt, "decided_by": call.decided_by, "was_hitl": call.was_hitl,
        "needs_review": call.needs_review, "review_reason": call.review_reason,
        "charged": charged if charged is not None else {}, "usage": call.usage, "reply_to": reply_to,
        "code": code, "issued": issued,
    }


def encode(
    call: ToolCall, reply_to: str, secret: str | None, checked: dict[str, Any] | None = None, code: str = ""
) -> dict[str, Any]:
    """The one encoding of a tool call as a task: its keyword arguments, ``token`` an HMAC under ``secret``
    over all the others (None without a secret). ``arguments`` travel as the journal keeps them (sensitive
    values as keyed digests), ``checked`` as given (the caller encrypts their sensitive values); ``code``
    names the function the coordinator checked the call against (``castor._code.function_name``: a worker
    whose tool of that name is another function refuses the call; "" for none); ``issued`` says when (now)."""
    kwargs = _fields(call, reply_to, checked, code, round(time.time(), 3))
    kwargs["token"] = _signature(secret, kwargs) if secret else None
    return kwargs


class Malformed(ValueError):
    """A task whose keyword arguments are no tool call; ``job`` is what could be read of it (None if nothing)."""

    def __init__(self, reason: str, job: Job | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.job = job


def decode(kwargs: Any) -> Job:
    """The one decoding of a task's keyword arguments into the ``Job`` they carry; ``Malformed`` for a
    field missing, unknown or of the wrong type (its token is checked by ``verify``, not here)."""
    if not isinstance(kwargs, dict):
        raise Malformed(f"task arguments must be an object, got {type(kwargs).__name__}")
    unknown = sorted(set(kwargs) - _FIELDS.keys())
    if unknown:
        raise Malformed(f"unexpected task fields: {', '.join(map(str, unknown))[:400]}", _partial(kwargs))
    for name, kind in _FIELDS.items():
        value = kwargs.get(name)
        if name == "token" and name not in kwargs:
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise Malformed(f"task field {name!r} is missing or not a {_type_name(kind)}", _partial(kwargs))
    for name in _AMOUNTS:
        amounts = kwargs[name]
        if amounts is not None and not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in amounts.values()
        ):
            raise Malformed(f"task field {name!r} must map resources to numbers", _partial(kwargs))
    issued = kwargs["issued"]
    if isinstance(issued, bool) or not 0 <= issued < 1e11:  # NaN and infinity fail the comparison too
        raise Malformed("task field 'issued' must be a time in seconds since the epoch", _partial(kwargs))
    if kwargs["step"] < 0 or kwargs["attempt"] < 0:
        raise Malformed("step and attempt must not be negative", _partial(kwargs))
    return Job(**kwargs)


def _partial(kwargs: dict[str, Any]) -> Job | None:
    """Enough of a malformed task to record the refusal against its run, if it names one."""
    run_id, step, tool = kwargs.get("run_id"), kwargs.get("step"), kwargs.get("tool_name")
    if not isinstance(run_id, str) or not isinstance(step, int) or isinstance(step, bool):
        return None
    reply_to = kwargs.get("reply_to")
    attempt = kwargs.get("attempt")
    return Job(
        run_id, step, str(tool or "?"), {}, attempt=attempt if isinstance(attempt, int) else 0,
        reply_to=reply_to if isinstance(reply_to, str) else "",
    )


def _type_name(kind: Any) -> str:
    return " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__


def _signature(secret: str, fields: dict[str, Any]) -> str:
    body = canonical({name: value for name, value in fields.items() if name != "token"}).encode()
    return hmac.digest(secret.encode(), body, "sha256").hex()  # one-shot: no HMAC object


def sign(secret: str, job: Job) -> str:
    """The coordinator's token for ``job`` (as ``encode`` signs it)."""
    return _signature(secret, _fields(job, job.reply_to, job.checked, job.code, job.issued))


def age(job: Job, now: float | None = None) -> float:
    """How many seconds ago the job's coordinator signed it (by this machine's clock)."""
    return (time.time() if now is None else now) - job.issued


def verify(secret: str | None, job: Job) -> bool:
    """Whether ``job`` carries a token ``secret`` signed for exactly this call: every field of it."""
    if not secret or not job.token:
        return False
    return digests_match(sign(secret, job), job.token)


def kwargs_repr(call: ToolCall, sensitive: frozenset[str] | set[str]) -> str:
    """What Flower and the worker's logs show of a task's kwargs: run, step, tool, redacted arguments."""
    shown: dict[str, Any] = {"run_id": call.run_id, "step": call.step, "tool_name": call.tool_name}
    shown["attempt"] = call.attempt
    shown["arguments"] = redact(call.arguments, sensitive)
    return repr(shown)


@dataclass(frozen=True, slots=True)
class Reply:
    """A worker's answer for one effect."""

    effect_id: str
    attempt: int
    status: str
    result: Any = None
    error_type: str = ""
    message: str = ""
    journaled: bool = False  # the worker journaled the failure itself (refusals, in-doubt)

    task_id: str = ""  # the Celery task it answers
    finished_at: float | None = None  # when the call finished, as the step's journaled record says (ok)

    def fields(self, secret: str | None = None) -> dict[str, str]:
        """The reply as a stream entry, signed with ``secret`` (field ``h``) if there is one."""
        fields = {
            "e": self.effect_id, "a": str(self.attempt), "s": self.status, "r": canonical(self.result),
            "t": self.error_type, "m": self.message, "j": "1" if self.journaled else "", "i": self.task_id,
            "f": "" if self.finished_at is None else repr(self.finished_at),
        }
        if secret:
            fields["h"] = reply_signature(secret, fields)
        return fields


_REPLY_SIGNED = ("i", "e", "a", "s", "r", "t", "m", "j", "f")


def reply_signature(secret: str, fields: dict[str, str]) -> str:
    """HMAC-SHA256 under ``secret`` over a reply's fields as written (task id, effect, attempt, status,
    result, error, finish time): distinct from a task's token, which signs JSON, never a ``reply|`` string."""
    # Each field length-prefixed: unambiguous, and a fraction of the cost of a JSON dump.
    signed = "reply" + "".join(f"|{len(v)}:{v}" for v in (fields.get(name, "") for name in _REPLY_SIGNED))
    return hmac.digest(secret.encode(), signed.encode(), "sha256").hex()


def parse_reply(fields: Any, secret: str | None = None) -> Reply:
    """A stream entry back into a ``Reply``: its fields as a mapping or a flat ``[name, value, ...]`` list,
    of ``str`` or ``bytes``. With ``secret``, a reply without its valid signature is a ``ValueError``."""
    if isinstance(fields, list) and fields and type(fields[0]) is str:  # hiredis's, decoded: the common case
        get = dict(zip(fields[::2], fields[1::2], strict=True))
    else:
        pairs = fields.items() if isinstance(fields, dict) else zip(fields[::2], fields[1::2], strict=True)
        get = {_text(k): _text(v) for k, v in pairs}
    if secret and not digests_match(reply_signature(secret, get), get.get("h")):
        effect, task = get.get("e", "?")[:80], get.get("i", "?")[:80]
        raise ValueError(f"reply for {effect!r} (task {task!r}) has no valid signature")
    return Reply(
        effect_id=get.get("e", ""),
        attempt=int(get.get("a") or 0),
        status=get.get("s", ERROR),
        result=json.loads(get["r"]) if get.get("r") else None,
        error_type=get.get("t", ""),
        message=get.get("m", ""),
        journaled=bool(get.get("j")),
        task_id=get.get("i", ""),
        finished_at=float(get["f"]) if get.get("f") else None,
    )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- trace context ----------------------------------------------------------------------------------

TRACEPARENT_HEADER, TRACE_SIGNATURE_HEADER = "castor_traceparent", "castor_trace_sig"


def trace_signature(secret: str, token: str | None, traceparent: str) -> str:
    """HMAC-SHA256 under ``secret`` over a task's W3C ``traceparent`` header, bound to the task's ``token``:
    a trace context copied onto another task, or written by anyone without the secret, links nothing."""
    signed = f"trace|{len(token or '')}:{token or ''}|{traceparent}"
    return hmac.digest(secret.encode(), signed.encode(), "sha256").hex()
