"""The values a model syscall carries: a canonical request in, a typed response out.

A model step is journaled as canonical JSON (``castor._canonical``): the request the agent asked for and
the whole response. ``ModelResponse`` is the typed view an agent receives; ``to_dict``/``from_dict`` are
the journal's form of it, so a replayed step gives back an equal response without calling the model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

from castor._canonical import canonical
from castor.errors import CastorError


class ModelCallError(CastorError):
    """A model call that could not be made or answered: bad request, unknown model, provider failure."""


class ModelTimeoutError(ModelCallError, TimeoutError):
    """The provider did not answer before the call's deadline."""


class ModelRefusedError(CastorError):
    """The kernel refused the model call (its budget cannot cover it); ``response`` is what was journaled."""

    def __init__(self, response: Mapping[str, Any]) -> None:
        super().__init__(str(response.get("feedback_message") or response.get("status")))
        self.response = dict(response)
        self.resource = response.get("resource")


class ProviderHTTPError(ModelCallError):
    """The provider answered with an HTTP error; ``status`` and ``retry_after`` (seconds, for a 429) say which."""

    def __init__(self, message: str, status: int, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class MalformedResponseError(ModelCallError):
    """The provider's answer cannot be read (a tool call whose arguments are not JSON, no choices, ...).

    ``response`` is what could be read of it, usage included: the call is charged what it used.
    """

    def __init__(self, message: str, response: dict[str, Any]) -> None:
        super().__init__(message)
        self.response = response


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a call used, as the provider reported them; ``estimated``: it reported none (Castor counts offline)."""

    input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        """Input and output tokens together."""
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool the model asks for; send it through ``castor.lib.tool(call.name, **call.arguments)``."""

    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelResponse:
    """What a model answered: its text, the tools it asks for, the tokens used, who answered and why it stopped."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    finish_reason: str = "stop"

    def to_dict(self) -> dict[str, Any]:
        """The journal's form: plain JSON."""
        return {
            "text": self.text,
            "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in self.tool_calls],
            "usage": {
                "input_tokens": self.usage.input_tokens,
                "output_tokens": self.usage.output_tokens,
                **({"estimated": True} if self.usage.estimated else {}),
            },
            "model": self.model,
            "finish_reason": self.finish_reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelResponse:
        """The response ``to_dict`` made (a journaled step's response)."""
        usage = data.get("usage") or {}
        return cls(
            text=str(data.get("text") or ""),
            tool_calls=tuple(
                ToolCall(str(c.get("id", "")), str(c["name"]), dict(c.get("arguments") or {}))
                for c in data.get("tool_calls") or ()
            ),
            usage=Usage(
                int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0)), bool(usage.get("estimated"))
            ),
            model=str(data.get("model") or ""),
            finish_reason=str(data.get("finish_reason") or "stop"),
        )


def canonical_request(value: Any, *, drop: Iterable[str] = ()) -> Any:
    """``value`` as plain canonical JSON data, with every key named in ``drop`` removed at any depth.

    A model request must be the same at replay as in the live run: strip what a framework generates
    anew each time (run ids, message ids, timestamps) by naming those keys in ``drop``. Dataclasses and
    pydantic models become dicts, tuples lists; anything JSON cannot hold is a ``ModelCallError`` naming it.
    """
    dropped = frozenset(drop)
    return _clean(_plain(value, "request"), dropped) if dropped else _plain(value, "request")


class _NotPlain(Exception):
    """A value the fast walk leaves to the JSON round trip (a tuple, a model, a non-string key, ...)."""


def _walk(value: Any) -> Any:
    # Plain JSON data as it is: checked in one pass, copied so the caller's later changes cannot reach the
    # journal. Twice as fast as the JSON round trip on a chat request, which is every model call's path.
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if value != value or value in (_INF, -_INF):
            raise _NotPlain
        return value
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _NotPlain
            out[key] = _walk(item)
        return out
    if kind is list:
        return [_walk(item) for item in value]
    raise _NotPlain


_INF = float("inf")


def _plain(value: Any, where: str) -> Any:
    try:
        return _walk(value)
    except _NotPlain:
        pass  # something JSON spells another way: the round trip says how (or why not)
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    try:
        return json.loads(canonical(value))
    except (TypeError, ValueError) as exc:
        raise ModelCallError(f"{where} is not JSON data: {exc}") from None


def _clean(value: Any, drop: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v, drop) for k, v in value.items() if k not in drop}
    if isinstance(value, list):
        return [_clean(v, drop) for v in value]
    return value


def response_dict(value: Any) -> dict[str, Any]:
    """What an invoked model returned, as the journal keeps it: a ``ModelResponse`` or a JSON mapping."""
    if isinstance(value, ModelResponse):
        return value.to_dict()
    if not isinstance(value, Mapping):
        raise ModelCallError(f"a model call must return a ModelResponse or a JSON mapping, got {type(value).__name__}")
    plain = _plain(value, "model response")
    return dict(plain)


def messages_of(prompt: str | None, messages: Iterable[Mapping[str, Any]] | None, system: str) -> list[dict[str, Any]]:
    """The chat messages of a call given as a prompt, as messages, or both (the prompt goes last)."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for message in messages or ():
        if not isinstance(message, Mapping) or "role" not in message:
            raise ModelCallError(f"a message must be a mapping with a 'role', got {message!r}")
        out.append(dict(message))
    if prompt is not None:
        out.append({"role": "user", "content": prompt})
    if not out:
        raise ModelCallError("a model call needs a prompt or messages")
    return out


def naming(request: dict[str, Any], model: str, provider: Any) -> dict[str, Any]:
    """``request`` as sent to the kernel's ``provider``: naming ``model`` where it is not the provider's own
    default (the step is journaled and priced as ``model``, so that is the model to ask). The journaled
    request is left as it is."""
    if "model" in request or model == getattr(provider, "model", model):
        return request
    return {**request, "model": model}
