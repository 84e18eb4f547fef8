"""A guarded pydantic-ai model's ``request_stream`` (``agent.run_stream``, ``iter`` + ``node.stream``,
``run_stream_events``): one journaled model step.

The wrapped model's stream is opened and read inside the model syscall (``castor.frameworks._streaming``);
its part events reach the agent as they arrive, through a ``StreamedResponse`` of Castor's that shares
the wrapped stream's parts, and the ``ModelResponse`` it ends with is journaled as the record a
non-streamed request makes. A step served from the journal is streamed as one ``PartStartEvent`` per part
of the journaled response, the model not called.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic_ai.messages import (
    ModelResponse,
    ModelResponseStreamEvent,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
)
from pydantic_ai.models import StreamedResponse

from castor.frameworks._streaming import Emit, StreamStep


@dataclass
class GuardedStreamedResponse(StreamedResponse):
    """The agent's view of a guarded streamed request: the wrapped stream's events as they arrive (or the
    journaled response's parts), and at the end the response the step journaled."""

    model: str = ""
    request: dict[str, Any] = field(default_factory=dict)
    opened: Callable[[GuardedStreamedResponse, Emit], Any] | None = None
    to_json: Callable[[ModelResponse], dict[str, Any]] | None = None
    from_json: Callable[[dict[str, Any]], ModelResponse] | None = None
    _live: StreamedResponse | None = field(default=None, init=False)
    _response: ModelResponse | None = field(default=None, init=False)

    def attach(self, live: StreamedResponse) -> None:
        """The wrapped model's stream, once opened: its parts are this stream's parts."""
        self._live = live
        self.__dict__["_parts_manager"] = live._parts_manager  # the cached property, shared

    async def _get_event_iterator(self) -> AsyncIterator[ModelResponseStreamEvent]:
        assert self.opened is not None and self.to_json is not None and self.from_json is not None
        live_response: list[ModelResponse] = []
        to_json = self.to_json

        async def run(emit: Emit) -> dict[str, Any]:
            response = await self.opened(self, emit)  # type: ignore[misc]
            live_response.append(response)
            return to_json(response)

        step = StreamStep(self.request, self.model, run)
        async for event in step:
            yield event
        journaled = step.response
        assert journaled is not None
        if step.streamed and live_response:
            response = live_response[-1]
        else:  # served from the journal: each part of the journaled response, whole
            response = self.from_json(journaled)
            for index, part in enumerate(response.parts):
                yield self._parts_manager.handle_part(vendor_part_id=index, part=part)
        self._response = response
        self._usage = response.usage

    def get(self) -> ModelResponse:
        """The journaled response once the stream ended; the wrapped stream's response so far before."""
        if self._response is not None:
            return self._response
        if self._live is not None:
            return self._live.get()
        return ModelResponse(parts=[], model_name=self.model)

    @property
    def model_name(self) -> str:
        """The wrapped model's name."""
        return self._live.model_name if self._live is not None else self.model

    @property
    def provider_name(self) -> str | None:
        """The wrapped stream's provider (None before it opened, or on replay)."""
        return self._live.provider_name if self._live is not None else None

    @property
    def provider_url(self) -> str | None:
        """The wrapped stream's provider URL (None before it opened, or on replay)."""
        return self._live.provider_url if self._live is not None else None

    @property
    def timestamp(self) -> datetime:
        """When the response was made (the journaled one's on replay)."""
        if self._response is not None:
            return self._response.timestamp
        return self._live.timestamp if self._live is not None else datetime.now().astimezone()

    async def close_stream(self) -> None:
        """Nothing to close here: the wrapped stream is read, and closed, inside the model step."""


def event_text(event: ModelResponseStreamEvent) -> str:
    """The text an event adds to the response (counted for a stream stopped part way)."""
    if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
        return event.part.content
    if isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
        return event.delta.content_delta
    return ""
