"""castor-kernel 0.5.1's model wrappers, ``LLMSyscall`` and ``StreamingLLMSyscall``, as thin adapters.

    llm = LLMSyscall(call_fn=ask, consumes="api_usd", cost_per_use=0.03)      # a tool: llm_inference
    kernel = Castor(tools=[llm])                                             # or registry= / gate=
    answer = await llm.infer(proxy, model="gpt-4", prompt="Summarise X")     # inside a run

``LLMSyscall`` is a tool (``castor.registry``): its calls are journaled syscalls like any other, charged
``cost_per_use`` of ``consumes``. ``StreamingLLMSyscall.infer`` is a streamed model syscall
(``castor.lib.streaming``): the whole text is journaled once the stream ends and a replayed step gives it
back without calling ``stream_fn``; ``on_chunk`` / ``on_chunk_async`` see each live chunk. A stream that is
preempted or fails part way is charged in the store for what it received (0.5.1's ``charge_partial``:
``cost_per_token`` per chunk, at most ``cost_per_use``; and its tokens where the run tracks them) and its
text is kept in ``checkpoint.partial_work``, read on resume as ``proxy.preemption_context["partial_work"]``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

from castor.llm.cost import FlatPrice
from castor.llm.types import ModelCallError, ModelRefusedError, canonical_request
from castor.registry import ToolMetadata, ToolRegistry

DEFAULT_TOOL_NAME = "llm_inference"
DEFAULT_STREAMING_TOOL_NAME = "llm_inference_streaming"

__all__ = ["DEFAULT_STREAMING_TOOL_NAME", "DEFAULT_TOOL_NAME", "LLMSyscall", "StreamingLLMSyscall"]


def _metadata(name: str, func: Callable[..., Any], consumes: str, cost_per_use: float) -> ToolMetadata:
    if not isinstance(name, str) or not name:
        raise ModelCallError(f"tool_name must be a non-empty string, got {name!r}")
    cost = float(cost_per_use)
    if cost < 0:
        raise ModelCallError(f"cost_per_use must not be negative, got {cost_per_use!r}")
    return ToolMetadata(tool_name=name, consumes=consumes, cost_per_use=cost, func=func, is_async=True)


class LLMSyscall:
    """A model function (``async def call_fn(**kwargs) -> str``) as the tool ``tool_name``, costing
    ``cost_per_use`` of ``consumes`` per call. Registered in ``registry`` at once if given, else by
    ``Castor(tools=[llm])``; ``Castor(llm=call_fn)`` builds one (``kernel.llm``)."""

    def __init__(
        self,
        registry: ToolRegistry | None = None,
        call_fn: Callable[..., Any] | None = None,
        consumes: str = "api_usd",
        cost_per_use: float = 1.0,
        tool_name: str = DEFAULT_TOOL_NAME,
    ) -> None:
        if call_fn is None or not callable(call_fn):
            raise TypeError(f"LLMSyscall needs call_fn, an async function calling the model, got {call_fn!r}")
        self.tool_name = tool_name
        self.call_fn = call_fn
        self._metadata = _metadata(tool_name, call_fn, consumes, cost_per_use)
        if registry is not None:
            registry.register(self._metadata)

    async def infer(self, proxy: Any = None, /, **kwargs: Any) -> Any:
        """Call the model as a syscall of the current run (``proxy``, 0.5.1's first argument, is not needed):
        journaled with ``kwargs`` as its arguments, served from the journal when the run replays."""
        from castor.lib.primitives import tool

        return await tool(self.tool_name, **kwargs)


class StreamingLLMSyscall:
    """A streaming model function (``async def stream_fn(**kwargs)`` yielding text chunks) as a streamed
    model syscall of the run, priced as 0.5.1 priced it: ``cost_per_use`` of ``consumes`` for a whole
    answer, ``cost_per_token`` per chunk received (at most ``cost_per_use``) for one stopped part way.

    ``Castor(tools=[llm])`` / ``registry=`` also register ``tool_name`` as a plain tool (the whole text,
    unstreamed) for code that calls it by name; ``infer`` is the streamed call.
    """

    def __init__(
        self,
        registry: ToolRegistry | None = None,
        stream_fn: Callable[..., AsyncIterator[str]] | None = None,
        consumes: str = "api_usd",
        cost_per_use: float = 1.0,
        cost_per_token: float | None = None,
        tool_name: str = DEFAULT_STREAMING_TOOL_NAME,
        on_chunk: Callable[[str, str], None] | None = None,
        on_chunk_async: Callable[[str, str], Any] | None = None,
    ) -> None:
        if stream_fn is None or not callable(stream_fn):
            raise TypeError(f"StreamingLLMSyscall needs stream_fn, an async generator of text, got {stream_fn!r}")
        if cost_per_token is not None and float(cost_per_token) < 0:
            raise ModelCallError(f"cost_per_token must not be negative, got {cost_per_token!r}")
        self.tool_name = tool_name
        self.stream_fn = stream_fn
        self.on_chunk = on_chunk
        self.on_chunk_async = on_chunk_async
        self.model = tool_name  # the model id of its steps: model:<tool_name> in the journal
        self.price = FlatPrice(
            str(consumes), float(cost_per_use), None if cost_per_token is None else float(cost_per_token)
        )

        @functools.wraps(stream_fn)
        async def whole(**kwargs: Any) -> str:
            return "".join([str(chunk) async for chunk in stream_fn(**kwargs)])

        self._metadata = _metadata(tool_name, whole, consumes, cost_per_use)
        if registry is not None:
            registry.register(self._metadata)

    async def infer(self, proxy: Any = None, /, **kwargs: Any) -> Any:
        """Stream the model's answer as one syscall of the current run and return its whole text; a call its
        budget cannot cover returns ``{"status": "INSUFFICIENT_CAPABILITY", ...}`` as a tool call would."""
        from castor.lib.streaming import streamed

        request = canonical_request({"arguments": kwargs})
        try:
            chunks = streamed(request, model=self.model, provider=self, flat=self.price)
            return "".join([chunk async for chunk in chunks])
        except ModelRefusedError as refused:
            return refused.response

    async def stream(self, request: dict[str, Any]) -> AsyncIterator[Any]:
        """The provider side of ``infer``'s call (live only): ``stream_fn``'s chunks, each handed to the
        callbacks once received, then the whole response (its usage counted offline)."""
        text = ""
        async for piece in self.stream_fn(**request["arguments"]):
            chunk = str(piece)
            text += chunk
            yield chunk  # received (and charged if the stream stops) before a callback may preempt the run
            if self.on_chunk is not None:
                self.on_chunk(chunk, text)
            if self.on_chunk_async is not None:
                await self.on_chunk_async(chunk, text)
            if self.on_chunk is not None or self.on_chunk_async is not None:
                # A callback that preempted the run stops the stream here, before the next chunk is read.
                await asyncio.sleep(0)
        yield {"text": text, "model": self.model, "finish_reason": "stop"}
