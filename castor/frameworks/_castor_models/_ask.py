"""What every Castor-backed framework model shares: the call to the kernel's provider and content as text."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from castor.kernel.context import active_run
from castor.lib.models import _model_id, build_request, model_call
from castor.llm.types import ModelResponse


async def ask(
    messages: list[dict[str, Any]], *, model: str | None, tools: Iterable[Mapping[str, Any]] | None = None,
    max_tokens: int | None = None, options: Mapping[str, Any] | None = None,
) -> ModelResponse:
    """One model syscall of the run, answered by the kernel's provider (on the fleet's ``llm`` pool if it has one).

    ``model`` None: the kernel's default model; a model named is also in the request (``model``), which the
    providers send as the model to use. ``options`` (``temperature``, ``stop``, ...) are part of the
    request, passed to the provider as they are; the ones set to None are left out.
    """
    extra = {k: v for k, v in (options or {}).items() if v is not None}
    if model:
        extra["model"] = model
    request = build_request(messages, tools=list(tools or ()) or None, max_tokens=max_tokens, **extra)
    journaled = await model_call(request, model=_model_id(active_run(), model), max_tokens=max_tokens)
    return ModelResponse.from_dict(journaled)


def text_of(content: Any) -> str:
    """A message's content as the text a chat model reads: strings as they are, the text of content blocks
    joined, anything else as JSON."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_block_text(block) for block in content)
    return json.dumps(content, default=str, sort_keys=True)


def _block_text(block: Any) -> str:
    if isinstance(block, str):
        return block
    if isinstance(block, Mapping):
        for key in ("text", "content"):
            if isinstance(block.get(key), str):
                return str(block[key])
    return json.dumps(block, default=str, sort_keys=True)


def call_id(response: ModelResponse, index: int, at: int) -> str:
    """The id of the response's tool call ``index``; one the journal keeps stable if the provider gave none
    (``at``: the conversation's length, so ids differ from one step to the next)."""
    given = response.tool_calls[index].id
    return given or f"castor_call_{at}_{index}"


def tool_spec(name: str, description: str | None, parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """A tool as Castor's request holds it."""
    return {"name": name, "description": description or "",
            "parameters": dict(parameters or {"type": "object", "properties": {}})}
