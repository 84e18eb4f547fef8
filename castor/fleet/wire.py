"""What crosses the broker and the reply stream between a coordinator and a worker: JSON only.

A tool task is named ``castor.tool.<tool>`` and carries one keyword argument per field of ``Job``. Its
``token`` is an HMAC-SHA256, under the fleet's secret, over the run, step, tool, canonical arguments,
approval round, journal record and reply stream: a worker runs nothing a coordinator did not sign (only
in an insecure development fleet without a secret, a gated tool's unsigned call that a human approved in
Redis), and replies to no stream a coordinator did not name.

A reply is a flat stream entry naming the Celery task id it answers (a coordinator takes a reply only
for the task it published) and, with a secret, signed over all its fields (``reply_signature``): a reply
that anyone else wrote to the stream, or that answers a forged task, resolves nothing.

Sensitive arguments travel encrypted (``castor._sealing``) and the token covers them as sent, encrypted;
the record's request holds their keyed digests.

Part of the fleet's supported API (``castor.fleet``).
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from castor._canonical import canonical
from castor._redact import redact

TASK_PREFIX = "castor.tool."

# Reply statuses: what became of a task.
OK, ERROR, REFUSED, IN_DOUBT, TIMEOUT = "ok", "error", "refused", "in_doubt", "timeout"


def task_name(tool: str) -> str:
    """The Celery task name of a tool, as Flower shows it."""
    return f"{TASK_PREFIX}{tool}"


@dataclass(slots=True)
class Job:
    """One tool call as a task carries it."""

    run_id: str
    step: int
    tool: str
    arguments: dict[str, Any]
    effect_id: str
    attempt: int = 0
    reply_to: str = ""
    record: dict[str, Any] = field(default_factory=dict)
    token: str | None = None
    # The Celery task id it came as: set by the worker from the message, never a task argument.
    task_id: str = field(default="", compare=False)

    def kwargs(self) -> dict[str, Any]:
        """The task's keyword arguments (shallow: serialized right away, never mutated)."""
        return {
            "run_id": self.run_id, "step": self.step, "tool": self.tool, "arguments": self.arguments,
            "effect_id": self.effect_id, "attempt": self.attempt, "reply_to": self.reply_to, "record": self.record,
            "token": self.token,
        }

    def signed_part(self) -> bytes:
        """The bytes a token authenticates."""
        body = [self.run_id, self.step, self.tool, self.arguments, self.attempt, self.record, self.reply_to]
        return canonical(body).encode()


def sign(secret: str, job: Job) -> str:
    """The coordinator's token for ``job``."""
    return hmac.digest(secret.encode(), job.signed_part(), "sha256").hex()  # one-shot: no HMAC object


def verify(secret: str | None, job: Job) -> bool:
    """Whether ``job`` carries a token ``secret`` signed for exactly this call."""
    if not secret or not job.token:
        return False
    return hmac.compare_digest(sign(secret, job), job.token)


def kwargs_repr(job: Job, sensitive: frozenset[str] | set[str]) -> str:
    """What Flower and the worker's logs show of a task's kwargs: run, step, tool, redacted arguments."""
    shown = {"run_id": job.run_id, "step": job.step, "tool": job.tool, "attempt": job.attempt}
    shown["arguments"] = redact(job.arguments, sensitive)
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

    def fields(self, secret: str | None = None) -> dict[str, str]:
        """The reply as a stream entry, signed with ``secret`` (field ``h``) if there is one."""
        fields = {
            "e": self.effect_id, "a": str(self.attempt), "s": self.status, "r": canonical(self.result),
            "t": self.error_type, "m": self.message, "j": "1" if self.journaled else "", "i": self.task_id,
        }
        if secret:
            fields["h"] = reply_signature(secret, fields)
        return fields


_REPLY_SIGNED = ("i", "e", "a", "s", "r", "t", "m", "j")


def reply_signature(secret: str, fields: dict[str, str]) -> str:
    """HMAC-SHA256 under ``secret`` over a reply's fields as written (task id, effect, attempt, status,
    result, error): distinct from a task's token, which signs JSON, never a ``reply|`` string."""
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
    if secret and not hmac.compare_digest(reply_signature(secret, get), get.get("h", "")):
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
