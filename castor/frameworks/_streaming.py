"""A framework model's streamed response as one model step: chunks to the framework as they come, the
whole response journaled once the stream ends.

``StreamStep`` is ``castor.lib.stream``'s model syscall (``castor.lib.streaming``) for a framework's own
chunks: the step is claimed when the stream starts, in call order; the framework's model streams inside
the syscall (on a task beside the framework's loop) and each chunk is handed to the framework as it
arrives; the response the framework assembles from its chunks is journaled as the very record a
non-streamed step would hold, charged the usage it reports. A replayed or forked step is served from the
journal without calling the model: ``StreamStep.streamed`` is then False and the framework re-chunks the
journaled response (``castor.frameworks.<name>`` does, in its own chunk types). A stream that fails or is
stopped part way is charged for what it received (the prompt, and its text counted offline); its partial
text is kept in the run's ``partial_work`` and in the step's failure (``castor inspect``).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from castor.frameworks._common import _RUN_ENDING, RunEnding, run_loop
from castor.kernel.context import active_run
from castor.lib.models import _checked, _models, _prepared
from castor.lib.streaming import read_beside
from castor.llm.cost import estimate_prompt, estimate_tokens

Emit = Callable[[Any, str], None]
"""Hands one chunk to the framework: the chunk, and the text it carries (counted if the stream stops)."""

_DONE = object()


class StreamStep:
    """One streamed model call of a framework: iterate it for the chunks; then ``response`` is the step's
    journaled response and ``streamed`` tells whether its chunks came from the model (else the step was
    served from the journal and yielded nothing: the caller re-chunks ``response``).

    ``run(emit)`` streams the framework's model, calls ``emit(chunk, text)`` for each chunk as it arrives
    and returns the whole response as the journal keeps it (the framework's ``response_json``, a fresh
    JSON dict: ``canonical``). It is not called on replay.
    """

    def __init__(
        self, request: Mapping[str, Any], model: str, run: Callable[[Emit], Awaitable[dict[str, Any]]], *,
        canonical: bool = True,
    ) -> None:
        self.request = request
        self.model = model
        self.canonical = canonical
        self.response: dict[str, Any] | None = None
        self._run = run
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._texts: list[str] = []
        self._chunks = 0
        self._plain: dict[str, Any] = {}

    @property
    def streamed(self) -> bool:
        """Whether the model streamed this step's chunks (False: served from the journal)."""
        return self._chunks > 0

    def _emit(self, chunk: Any, text: str) -> None:
        self._chunks += 1
        if text:
            self._texts.append(text)
        self._queue.put_nowait(chunk)

    async def _invoke(self, _request: dict[str, Any]) -> dict[str, Any]:
        return await self._run(self._emit)

    def _partial(self) -> dict[str, Any] | None:
        return received(self._plain, self._texts, self._chunks)

    def __aiter__(self) -> AsyncGenerator[Any, None]:
        return self._stream()

    async def _stream(self) -> AsyncGenerator[Any, None]:
        ctx = active_run()
        models = _models(ctx)
        self._plain, size = _prepared(self.request, self.model, self.canonical)
        mmu = ctx.services.mmu
        if mmu is not None and mmu.wants_room(ctx):
            await mmu.fit(ctx)  # as for any model call: the run's context fits first
        # The step is claimed here, in call order; the chain runs beside the framework while it reads.
        syscall = models.syscall(ctx, self.model, self._plain, invoke=self._invoke, size=size,
                                 partial=self._partial, via_provider=False, canonical=self.canonical)
        task = asyncio.ensure_future(models.chain(syscall))
        async with contextlib.aclosing(read_beside(task, self._queue)) as chunks:
            async for item in chunks:
                yield item
        self.response = _checked(task.result())


def received(request: Mapping[str, Any], texts: list[str], chunks: int | None = None) -> dict[str, Any] | None:
    """What a stream stopped part way received (``model_call(partial=...)``): its text (``texts``, from
    ``chunks`` chunks: by default one each), and the usage counted offline; None if nothing came."""
    count = len(texts) if chunks is None else chunks
    if not count:
        return None
    text = "".join(texts)
    usage = {"input_tokens": estimate_prompt(request), "output_tokens": estimate_tokens(text)}
    return {"text": text, "usage": usage, "partial": True, "chunks": count}


def stream_in_thread(
    framework: str, step: Callable[[], StreamStep], rechunk: Callable[[dict[str, Any]], Iterable[Any]], runner: str,
) -> Iterator[Any]:
    """A ``StreamStep`` read from a synchronous framework's thread (``castor.frameworks._common.in_thread``):
    the step runs on the run's loop, each chunk crosses to the thread as it arrives; a step served from
    the journal is ``rechunk(response)``. An error that ends the run crosses the framework carried."""

    async def chunks() -> AsyncIterator[Any]:
        streaming = step()
        async for chunk in streaming:
            yield chunk
        if not streaming.streamed and streaming.response is not None:
            for chunk in rechunk(streaming.response):
                yield chunk

    return iterate_in_thread(framework, chunks, runner)


def iterate_in_thread(framework: str, items: Callable[[], AsyncIterator[Any]], runner: str) -> Iterator[Any]:
    """``items()`` iterated on the run's loop and read from a synchronous framework's thread (``in_thread``):
    each item crosses to the thread as it comes. An error that ends the run crosses the framework carried
    (``runner``: what the error tells to call instead when read outside such a thread)."""
    loop = run_loop(f"a guarded {framework} stream read", runner)
    chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()

    async def pump() -> None:
        try:
            async for chunk in items():
                chunks.put(chunk)
        finally:
            chunks.put(_DONE)

    done = asyncio.run_coroutine_threadsafe(pump(), loop)
    while (item := chunks.get()) is not _DONE:
        yield item
    try:
        done.result()
    except _RUN_ENDING as error:
        raise RunEnding(error) from error
