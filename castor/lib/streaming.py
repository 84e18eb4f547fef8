"""A model call whose text arrives as it is written: ``async for chunk in castor.lib.stream(...)``.

The call is one model syscall like ``complete``'s (same request, same step, same journal record): the
budget reserves before the provider is contacted, the whole response is journaled once the stream ends,
and a replayed step yields the journaled text at once, without calling the model. A stream that fails or
is preempted part way is charged for what it received (the prompt, and the text so far counted offline);
its partial text is kept in the run's ``partial_work`` and in the failure's message (``castor inspect``).
In a fleet whose ``llm`` pool answers the kernel's model calls, the pool's worker forwards each chunk as the
provider sends it (``castor.llm.chunks``): the agent reads them as they come, as in one process.
An agent that stops reading early should close the stream (``async with contextlib.aclosing(stream(...))``):
closing waits for the call to end, so its step is journaled before the agent's next one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from castor.kernel.context import active_run
from castor.lib.models import _checked, _model_id, _models, build_request
from castor.llm.cost import FlatPrice, estimate_prompt, estimate_tokens
from castor.llm.types import ModelCallError, canonical_request, naming

_DONE = object()


async def stream(
    messages: Iterable[Mapping[str, Any]] | None = None,
    *,
    prompt: str | None = None,
    system: str = "",
    model: str | None = None,
    tools: Iterable[Mapping[str, Any]] | None = None,
    max_tokens: int | None = None,
    timeout: float | None = None,
    **options: Any,
) -> AsyncIterator[str]:
    """Ask the kernel's model and yield its text as it comes (the arguments are ``complete``'s)."""
    request = canonical_request(
        build_request(messages, prompt=prompt, system=system, tools=tools, max_tokens=max_tokens, **options)
    )
    ctx = active_run()
    if _models(ctx).provider is None:
        raise ModelCallError("stream() needs the kernel's model provider: Castor(llm=<provider>)")
    chunks = streamed(request, model=_model_id(ctx, model), max_tokens=max_tokens, timeout=timeout)
    async with contextlib.aclosing(chunks):  # an agent that closes this stream closes the call's too
        async for chunk in chunks:
            yield chunk


async def streamed(
    request: Any,
    *,
    model: str,
    provider: Any = None,
    max_tokens: int | None = None,
    timeout: float | None = None,
    flat: FlatPrice | None = None,
    on_response: Callable[[dict[str, Any]], None] | None = None,
) -> AsyncGenerator[str, None]:
    """``stream``'s model syscall for a canonical ``request``: answered by ``provider`` (one with
    ``stream(request)``; default: the kernel's) and priced, beside its tokens, by ``flat`` (castor-kernel
    0.5.1's ``StreamingLLMSyscall``, in ``castor.llm.wrapper``). ``on_response`` is handed the whole
    response as journaled (its tool calls, usage, finish reason) once the call ended, before the rest of a
    replayed text is yielded: what a framework's model needs beside the text."""
    ctx = active_run()
    models = _models(ctx)
    own = provider is not None
    mmu = ctx.services.mmu
    if mmu is not None and mmu.wants_room(ctx):
        await mmu.fit(ctx)  # as for complete: the run's context fits first
    receiver = _Receiver(provider if own else models.provider, model, request)
    # The step is claimed here, in call order; the chain runs beside the agent while it reads the chunks.
    call = models.call(
        ctx, model, request, invoke=receiver.invoke, max_tokens=max_tokens, timeout=timeout,
        partial=receiver.partial, via_provider=not own, flat=flat, chunk=receiver.put,
    )
    task = asyncio.ensure_future(call)
    async with contextlib.aclosing(read_beside(task, receiver.queue)) as chunks:
        async for item in chunks:
            yield item
    response = _checked(task.result())
    if on_response is not None:
        on_response(response)
    text, got = str(response.get("text") or ""), "".join(receiver.received)
    if len(text) > len(got) and text.startswith(got):
        # A replayed step, or a provider that does not stream: the whole text. A stream that lost chunks on
        # the way (the fleet's chunk stream is bounded): the rest of the journaled text.
        yield text[len(got):]


async def read_beside(task: asyncio.Future[Any], queue: asyncio.Queue[Any]) -> AsyncGenerator[Any, None]:
    """What ``task`` (a model call the syscall chain runs beside its reader) puts on ``queue``, as it comes,
    until the call ends. A reader that stops early and closes this generator waits for the call to end, so
    its step is journaled before the reader's next one; a reader cancelled meanwhile (preempted) stops the
    call, which charges what it received. Its outcome is ``task``'s."""
    task.add_done_callback(lambda _: queue.put_nowait(_DONE))
    try:
        while (item := await queue.get()) is not _DONE:
            yield item
    except GeneratorExit:
        if not task.done():
            with contextlib.suppress(Exception):  # a failure is journaled by the call itself
                await task
        raise
    except BaseException:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        raise


class _Receiver:
    """Runs the provider's stream inside the model syscall and hands each chunk to the agent's loop."""

    def __init__(self, provider: Any, model: str, request: dict[str, Any]) -> None:
        self.provider = provider
        self.model = model
        self.request = request
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.received: list[str] = []

    def put(self, text: str) -> None:
        """One chunk of text, to the agent (the fleet's ``llm`` pool forwards them here as they come)."""
        self.received.append(text)
        self.queue.put_nowait(text)

    async def invoke(self, request: dict[str, Any]) -> Any:
        """The model call: the chunks go to the queue as they come; the whole response is returned."""
        request = naming(request, self.model, self.provider)
        produce = getattr(self.provider, "stream", None)
        if produce is None:  # a provider that cannot stream answers in one piece
            return await self.provider.complete(request)
        final = None
        async for item in produce(request):
            if isinstance(item, str):
                self.put(item)
            else:
                final = item
        if final is None:
            raise ModelCallError(f"the stream of model {self.model!r} ended without its response")
        return final

    def partial(self) -> dict[str, Any] | None:
        """What a stream that stopped part way received: its text, and the usage counted offline."""
        if not self.received:
            return None
        text = "".join(self.received)
        usage = {"input_tokens": estimate_prompt(self.request), "output_tokens": estimate_tokens(text)}
        return {"text": text, "usage": usage, "partial": True, "chunks": len(self.received)}
