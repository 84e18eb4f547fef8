"""A guarded Agents SDK model's ``stream_response`` (``Runner.run_streamed``): one journaled model step.

The wrapped model's Responses stream events are handed to the SDK as they arrive
(``castor.frameworks._streaming``); the ``response.completed`` event's response is journaled as the
``ModelResponse`` a non-streamed call would give. A step served from the journal is streamed as one
``response.completed`` event holding the journaled output, usage and response id.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from agents import Model, ModelResponse, Usage
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseOutputItemDoneEvent,
    ResponseTextDeltaEvent,
    ResponseUsage,
)
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from castor.frameworks._streaming import Emit, StreamStep
from castor.llm import ModelCallError


async def stream_events(
    wrapped: Model, arguments: tuple[Any, ...], options: dict[str, Any], request: dict[str, Any], model: str,
    to_json: Callable[[ModelResponse, str], dict[str, Any]], from_json: Callable[[dict[str, Any]], ModelResponse],
) -> AsyncIterator[Any]:
    """Stream ``wrapped``'s response to ``stream_response(*arguments, **options)`` as the model step
    ``request`` (``to_json``/``from_json``: the guard's journaled form of a ``ModelResponse`` and back)."""

    async def run(emit: Emit) -> dict[str, Any]:
        completed: Response | None = None
        done: list[Any] = []  # output items some backends send only as item.done events
        async for event in wrapped.stream_response(*arguments, **options):
            emit(event, event.delta if isinstance(event, ResponseTextDeltaEvent) else "")
            if isinstance(event, ResponseCompletedEvent):
                completed = event.response
            elif isinstance(event, ResponseOutputItemDoneEvent):
                done.append(event.item)
        if completed is None:
            raise ModelCallError(f"the stream of model {model!r} ended without its response.completed event")
        usage = completed.usage
        tokens_in, tokens_out = (usage.input_tokens, usage.output_tokens) if usage else (0, 0)
        response = ModelResponse(
            output=list(completed.output or done), response_id=completed.id,
            usage=Usage(requests=1, input_tokens=tokens_in, output_tokens=tokens_out,
                        total_tokens=tokens_in + tokens_out),
        )
        return to_json(response, model)

    step = StreamStep(request, model, run)  # canonical parts (canonical_request), a fresh JSON response (to_json)
    async for event in step:
        yield event
    if not step.streamed and step.response is not None:  # served from the journal: one completed event
        yield completed_event(from_json(step.response), model)


def completed_event(response: ModelResponse, model: str) -> ResponseCompletedEvent:
    """The ``response.completed`` event a whole ``ModelResponse`` stands for."""
    usage = response.usage
    return ResponseCompletedEvent(
        type="response.completed", sequence_number=0,
        response=Response(
            id=response.response_id or "", created_at=time.time(), model=model, object="response",
            output=response.output, parallel_tool_calls=False, tool_choice="auto", tools=[],
            usage=ResponseUsage(
                input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                total_tokens=usage.input_tokens + usage.output_tokens,
                input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
                output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
            ),
        ),
    )
