"""The provider seam, and a deterministic provider for tests and ``castor demo``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from castor.llm.cost import estimate_prompt, estimate_tokens
from castor.llm.types import ModelCallError, ModelResponse, ToolCall, Usage


@runtime_checkable
class Provider(Protocol):
    """A model API: ``complete`` answers one request in Castor's neutral form.

    A request is ``{"messages": [{"role", "content", ...}], "tools": [{"name", "description",
    "parameters"}], "max_tokens": n, ...}``; an assistant message may carry ``tool_calls``
    (``[{"id", "name", "arguments"}]``) and a ``tool`` message a ``tool_call_id``; other options go by the
    OpenAI API's names (``temperature``, ``top_p``, ``stop``, ``tool_choice``: ``auto``, ``none``,
    ``required`` or ``{"type": "function", "function": {"name"}}``), which a provider translates to its
    API's. ``model`` is the model id
    calls use by default; ``models``, if not empty, the only ids it serves. A provider that streams also
    has ``stream(request)``, an async iterator of text chunks whose last item is the whole ``ModelResponse``.
    """

    model: str

    async def complete(self, request: dict[str, Any]) -> ModelResponse:
        """Answer ``request``."""
        ...


Step = str | ModelResponse | Mapping[str, Any] | BaseException | Callable[[dict[str, Any]], Any]


class Scripted:
    """A provider that answers from a script, in order: deterministic, offline, with usage it counts itself.

    Each entry is the text of a reply, a ``ModelResponse``, a mapping (``{"text": ..., "tool_calls":
    [{"name": ..., "arguments": {...}}]}``), an exception to raise, or a function of the request returning
    one of those. ``calls`` lists the requests it answered, so a test can count model calls.
    """

    def __init__(self, script: Iterable[Step], *, model: str = "scripted", chunk_words: int = 1) -> None:
        self.script = list(script)
        self.model = model
        self.models = frozenset({model})
        self.chunk_words = chunk_words
        self.calls: list[dict[str, Any]] = []

    def _next(self, request: dict[str, Any]) -> ModelResponse:
        if len(self.calls) >= len(self.script):
            raise ModelCallError(f"Scripted model {self.model!r} has no reply left ({len(self.script)} scripted)")
        step = self.script[len(self.calls)]
        self.calls.append(request)
        if callable(step) and not isinstance(step, BaseException | ModelResponse | Mapping):
            step = step(request)
        if isinstance(step, BaseException):
            raise step
        return self._response(step, request)

    def _response(self, step: Any, request: dict[str, Any]) -> ModelResponse:
        calls: tuple[ToolCall, ...] = ()
        if isinstance(step, str):
            text, finish = step, "stop"
        elif isinstance(step, ModelResponse):
            return step
        elif isinstance(step, Mapping):
            text = str(step.get("text", ""))
            calls = tuple(
                _tool_call(c, f"call_{len(self.calls)}_{i}")
                for i, c in enumerate(step.get("tool_calls") or ())
            )
            finish = str(step.get("finish_reason") or ("tool_calls" if calls else "stop"))
        else:
            raise ModelCallError(f"a Scripted reply must be text, a ModelResponse or a mapping, got {step!r}")
        output = estimate_tokens(text) + sum(estimate_tokens([c.name, c.arguments]) for c in calls)
        return ModelResponse(text, calls, Usage(estimate_prompt(request), output), self.model, finish)

    async def complete(self, request: dict[str, Any]) -> ModelResponse:
        """The next scripted reply."""
        return self._next(request)

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[str | ModelResponse]:
        """The next scripted reply, ``chunk_words`` words at a time, then the whole response."""
        response = self._next(request)
        words = response.text.split(" ")
        for start in range(0, len(words), self.chunk_words):
            piece = " ".join(words[start:start + self.chunk_words])
            yield piece if start == 0 else " " + piece
        yield response


def _tool_call(entry: Mapping[str, Any], default_id: str) -> ToolCall:
    return ToolCall(str(entry.get("id") or default_id), str(entry["name"]), dict(entry.get("arguments") or {}))
