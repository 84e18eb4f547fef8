"""What crosses the broker and the reply stream between a coordinator and a worker: JSON only.

A tool task is named ``castor.tool.<tool>`` and carries one keyword argument per field of ``Job``. Its
``token`` is an HMAC-SHA256, under the fleet's secret, over the run, step, tool, canonical arguments,
approval round and journal record: a worker runs nothing a coordinator did not sign (or, for a gated
tool without a token, nothing but the very call, tool and arguments, a human approved in Redis). A reply
is a flat stream entry.

Sensitive arguments travel encrypted (``castor._sealing``) and the token covers them as sent, encrypted;
the record's request holds their keyed digests.
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

    def kwargs(self) -> dict[str, Any]:
        """The task's keyword arguments (shallow: serialized right away, never mutated)."""
        return {
            "run_id": self.run_id, "step": self.step, "tool": self.tool, "arguments": self.arguments,
            "effect_id": self.effect_id, "attempt": self.attempt, "reply_to": self.reply_to, "record": self.record,
            "token": self.token,
        }

    def signed_part(self) -> bytes:
        """The bytes a token authenticates."""
        body = [self.run_id, self.step, self.tool, self.arguments, self.attempt, self.record]
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

    def fields(self) -> dict[str, str]:
        """The reply as a stream entry."""
        return {
            "e": self.effect_id, "a": str(self.attempt), "s": self.status, "r": canonical(self.result),
            "t": self.error_type, "m": self.message, "j": "1" if self.journaled else "",
        }


def parse_reply(fields: Any) -> Reply:
    """A stream entry back into a ``Reply``: its fields as a mapping or a flat ``[name, value, ...]`` list,
    of ``str`` or ``bytes``."""
    if isinstance(fields, list) and fields and type(fields[0]) is str:  # hiredis's, decoded: the common case
        get = dict(zip(fields[::2], fields[1::2], strict=True))
    else:
        pairs = fields.items() if isinstance(fields, dict) else zip(fields[::2], fields[1::2], strict=True)
        get = {_text(k): _text(v) for k, v in pairs}
    return Reply(
        effect_id=get.get("e", ""),
        attempt=int(get.get("a") or 0),
        status=get.get("s", ERROR),
        result=json.loads(get["r"]) if get.get("r") else None,
        error_type=get.get("t", ""),
        message=get.get("m", ""),
        journaled=bool(get.get("j")),
    )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
