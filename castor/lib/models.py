"""Model calls from agent code: each one a syscall of the run (``castor.kernel.model``).

    from castor.lib import complete, tool
    reply = await complete([{"role": "user", "content": "Clean up old logs"}], tools=[...])
    for call in reply.tool_calls:
        await tool(call.name, **call.arguments)

``model_call`` is the primitive: a canonical JSON request, a model id and, for a model that lives in the
agent's process (a framework's), the coroutine that calls it. ``complete`` and ``chat`` call the kernel's
provider (``Castor(llm=...)``) with a messages-level request and return a typed ``ModelResponse``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from castor.kernel.context import RunContext, active_run
from castor.llm.cost import NotPlain, plain_sized
from castor.llm.types import ModelCallError, ModelRefusedError, ModelResponse, canonical_request, messages_of

Invoke = Callable[[dict[str, Any]], Awaitable[Any]]


def _models(ctx: RunContext) -> Any:
    models = ctx.services.models
    if models is None:
        raise ModelCallError("this kernel takes no model calls (its Services were built without models)")
    return models


async def model_call(
    request: Mapping[str, Any],
    *,
    model: str,
    invoke: Invoke | None = None,
    max_tokens: int | None = None,
    timeout: float | None = None,
    canonical: bool = False,
    partial: Callable[[], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """Call a model as one journaled, budgeted step of the run; returns the response as journaled (JSON).

    ``request`` is the call's canonical JSON (``canonical_request`` strips volatile keys); a resumed or
    forked run gets the journaled response at this step without calling the model, and a different
    request there raises ``ReplayDivergenceError``. ``invoke(request)`` makes the call (a ``ModelResponse``
    or a JSON mapping, with ``usage: {input_tokens, output_tokens}`` if the model reports it); without it,
    the kernel's provider does. ``max_tokens`` (default: the request's, else 1024) bounds the output
    tokens reserved before the call; the charge is settled to the reported usage after it. A call its
    budget cannot cover raises ``ModelRefusedError`` without contacting the model.

    ``canonical=True`` is for a caller that builds the request from plain JSON parts it checked once and
    never changes afterwards (a framework guard: each message converted once, ``canonical_request``, and
    shared by every later step), and whose ``invoke`` returns a fresh JSON dict: neither is walked and
    copied again, so a step no longer costs the length of the whole conversation.

    ``partial()`` (for an ``invoke`` that streams): what the call received if it fails part way (``text``,
    ``usage`` counted offline, ``chunks``), or None; the failed step is journaled and charged with it, as
    ``castor.lib.stream``'s.
    """
    ctx = active_run()
    services = ctx.services
    models = services.models
    if models is None:
        _models(ctx)  # raises, naming what the kernel lacks
    if canonical and type(request) is dict and type(model) is str and model:
        plain, size = request, None  # _prepared's answer for a guard's request, without its call on every step
    else:
        plain, size = _prepared(request, model, canonical)
    mmu = services.mmu
    if mmu is not None and mmu.wants_room(ctx):
        await mmu.fit(ctx)  # the run's context fits its budget before any model call (the MMU's steps come first)
    call = models.syscall(
        ctx, model, plain, invoke=invoke, max_tokens=max_tokens, timeout=timeout, size=size, canonical=canonical,
        partial=partial,
    )
    response = await models.chain(call)
    if "status" not in response:  # a model's answer (the usual step): nothing for _checked to refuse
        return response  # the journaled response: a dict
    return _checked(response)


def _prepared(request: Mapping[str, Any], model: str, canonical: bool = False) -> tuple[dict[str, Any], int | None]:
    """``request`` copied as canonical JSON and sized for its reservation in the same walk (None: sized later);
    a canonical request as it is (sized, if it must be, part by part: ``castor.llm.cost``)."""
    if not isinstance(model, str) or not model:
        raise ModelCallError(f"model must be a non-empty model id, got {model!r}")
    if canonical and type(request) is dict:
        return request, None
    size: int | None
    try:
        plain, size = plain_sized(request)
    except NotPlain:  # tuples, dataclasses, pydantic models: through the JSON round trip
        plain, size = canonical_request(request), None
    if not isinstance(plain, dict):
        raise ModelCallError(f"a model request must be a JSON object, got {type(request).__name__}")
    return plain, size


def _checked(response: Any) -> dict[str, Any]:
    status = response.get("status")
    if status == "INSUFFICIENT_CAPABILITY":
        raise ModelRefusedError(response)
    if status == "HITL_REJECTED":  # a call in doubt a human said not to make again (castor.kernel.model_doubt)
        raise ModelCallError(f"model call in doubt, rejected: {response.get('human_feedback') or 'no reason given'}")
    return response  # the journaled response: a dict


def build_request(
    messages: Iterable[Mapping[str, Any]] | None = None,
    *,
    prompt: str | None = None,
    system: str = "",
    tools: Iterable[Mapping[str, Any]] | None = None,
    max_tokens: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """A messages-level request in Castor's provider-neutral form (the providers translate it)."""
    request: dict[str, Any] = {"messages": messages_of(prompt, messages, system)}
    if tools:
        request["tools"] = [_tool_schema(t) for t in tools]
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
            raise ModelCallError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        request["max_tokens"] = max_tokens
    request.update({k: v for k, v in options.items() if v is not None})
    return request


def _tool_schema(spec: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ModelCallError(f"a tool for the model must be a mapping with a 'name' (and 'parameters'), got {spec!r}")
    return {
        "name": spec["name"],
        "description": str(spec.get("description") or ""),
        "parameters": dict(spec.get("parameters") or {"type": "object", "properties": {}}),
    }


def _model_id(ctx: RunContext, model: str | None) -> str:
    if model:
        return model
    models = _models(ctx)
    chosen = models.default_model or getattr(models.provider, "model", "")
    if not chosen:
        raise ModelCallError("no model given and the kernel has no default: pass model= or Castor(llm=<provider>)")
    return str(chosen)


async def complete(
    messages: Iterable[Mapping[str, Any]] | None = None,
    *,
    prompt: str | None = None,
    system: str = "",
    model: str | None = None,
    tools: Iterable[Mapping[str, Any]] | None = None,
    max_tokens: int | None = None,
    timeout: float | None = None,
    **options: Any,
) -> ModelResponse:
    """Ask the kernel's model (``Castor(llm=...)``); returns its text, tool calls, usage, model and finish reason.

    ``tools`` are ``{"name", "description", "parameters"}`` JSON schemas; the tool calls in the response
    go through ``castor.lib.tool`` like any syscall. ``options`` (``temperature``, ...) are part of the request.
    """
    request = build_request(messages, prompt=prompt, system=system, tools=tools, max_tokens=max_tokens, **options)
    ctx = active_run()
    models = _models(ctx)
    model_id = _model_id(ctx, model)
    plain, size = _prepared(request, model_id)
    mmu = ctx.services.mmu
    if mmu is not None and mmu.wants_room(ctx):
        await mmu.fit(ctx)  # as for model_call
    call = models.syscall(ctx, model_id, plain, max_tokens=max_tokens, timeout=timeout, size=size)
    response = _checked(await models.chain(call))
    typed = call.typed  # the provider's own answer, when the journal holds exactly its dict form
    return typed if typed is not None else ModelResponse.from_dict(response)


def tool_schemas(*names: str) -> list[dict[str, Any]]:
    """The run's tools (``names``, or all of them) as a model sees them: ``{"name", "description",
    "parameters"}`` with the parameters' JSON schema, for ``complete(tools=...)``. Reading them costs nothing."""
    tools = active_run().services.tools
    specs = [tools.get(name) for name in names] if names else list(tools)
    return [
        {
            "name": spec.name,
            "description": (getattr(spec.func, "__doc__", None) or "").strip().split("\n")[0],
            "parameters": _untitled(spec.schema.json_schema()),
        }
        for spec in specs
    ]


def _untitled(schema: dict[str, Any]) -> dict[str, Any]:
    # pydantic titles every object and property after its Python name: words a model does not need
    schema = {k: v for k, v in schema.items() if k != "title"}
    properties = schema.get("properties")
    if isinstance(properties, dict):
        schema["properties"] = {
            name: {k: v for k, v in prop.items() if k != "title"} if isinstance(prop, dict) else prop
            for name, prop in properties.items()
        }
    return schema


def has_provider() -> bool:
    """Whether the run's kernel has a model provider of its own (``Castor(llm=<provider>)``)."""
    models = active_run().services.models
    return models is not None and models.provider is not None
