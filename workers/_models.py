"""The ``llm`` pool's model tasks: a kernel's model call, made on a worker that holds the API key.

A coordinator sends a model step as the task ``castor.tool.model:<id>`` (``castor.llm.fleet``) with the
call's canonical request as its one argument and its reservation as ``charged``. The worker runs it like
any tool task (check, claim, execute, journal, reply: ``runtime``), with two things only a model call has:

- the call itself waits its turn under the fleet's rate limits (``RedisRateLimiter``: requests and tokens
  per minute per provider, model and key, shared by every worker) up to the call's deadline, and a 429 with
  ``retry-after`` pauses the key for every worker before the call asks again (``call_limited``);
- before the step is journaled, ``settle`` replaces the reservation by what the provider reported, in the
  store, and sets ``charged`` (and the run's usage snapshot, which the coordinator sent as it stood before
  the step) to it: the record ``job.record`` builds is the one the embedded kernel journals.

A stream (the task's checked arguments say ``stream``) is forwarded chunk by chunk to the step's chunk stream
as the provider sends it (``castor.llm.chunks``), before the step is journaled whole and replied.

A model step is never run twice by the pool itself: a step whose worker was lost mid-call is in doubt (the
provider may have answered and billed it), and a redelivery of a journaled one is answered from its record.
The coordinator decides whether to make it again, in a new round (``castor.kernel.model_doubt``), sending
the first call's charge as ``spent``: the step settles to both.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from castor.backends.redis.keys import chunks as chunks_key
from castor.checkpoint import usage_after
from castor.errors import BackendUnavailable
from castor.fleet.restart import FINISH_PAUSE_MAX
from castor.llm.chunks import ChunkWriter
from castor.llm.cost import DEFAULT_MAX_TOKENS, cost_of_tokens, estimate_prompt, price_table, usage_from
from castor.llm.fleet import MODEL_PREFIX, api_key_of, build_provider, model_ids, model_timeout
from castor.llm.ratelimit import LimitKey, ProviderRateLimited, call_limited
from castor.llm.types import ModelCallError, ProviderHTTPError, response_dict
from castor.registry import castor_tool
from castor.seams import Backend
from castor.settings import Settings

log = logging.getLogger("castor.worker")


class ModelCalls:
    """The provider, the rate limiter and the prices of one worker process (rebuilt after a fork)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.prices = price_table(settings.llm.prices)
        self._pid = -1
        self._providers: dict[str, Any] = {}
        self._limiter: Any = None

    def tools(self) -> list[tuple[str, Callable[..., Awaitable[dict[str, Any]]]]]:
        """``(model:<id>, task function)`` for every model the config says the pool serves."""
        return [(MODEL_PREFIX + model, self._tool(model)) for model in model_ids(self.settings)]

    def _tool(self, model: str) -> Callable[..., Awaitable[dict[str, Any]]]:
        # The request's JSON, checked as a dict; ``stream``: the ChunkWriter ``bind`` put in place of the flag
        # the coordinator sent; ``spent``: the first call's charge of a call in doubt made again (see settle).
        async def call(request: dict, stream: bool = False, spent: dict | None = None) -> dict:
            writer = stream if isinstance(stream, ChunkWriter) else None
            return await self.complete(model, request, writer)

        call.__name__ = call.__qualname__ = f"model_{model}"
        return castor_tool(call, timeout_seconds=model_timeout(self.settings, MODEL_PREFIX + model))

    def _parts(self, model: str) -> tuple[Any, Any]:
        if self._pid != os.getpid():  # a forked child keeps none of its parent's connections
            from castor.llm.redis_limits import RedisRateLimiter

            self._pid, self._providers = os.getpid(), {}
            self._limiter = RedisRateLimiter.from_settings(self.settings)
        provider = self._providers.get(model)
        if provider is None:
            provider = self._providers[model] = build_provider(self.settings, model)
        return provider, self._limiter

    def bind(self, job: Any, checked: dict[str, Any], redis: Any, secret: str | None) -> dict[str, Any]:
        """The arguments to call a model task with: a stream's flag becomes the writer of its chunks to the
        step's chunk stream (named from the job's run, step and round, under the fleet's prefix), for a task
        this worker authenticated (one whose reply stream it kept)."""
        if not checked.get("stream"):
            return checked
        if not job.reply_to:
            return {**checked, "stream": False}
        key = chunks_key(self.settings.redis.prefix, job.run_id, job.step, job.attempt)
        return {**checked, "stream": ChunkWriter(redis, key, secret, job.task_id)}

    async def complete(self, model: str, request: dict[str, Any], writer: ChunkWriter | None = None) -> dict[str, Any]:
        """The provider's answer to ``request`` as canonical JSON, once the rate limits give it a turn; with
        ``writer``, streamed: each chunk is written as the provider sends it, then the end."""
        provider, limiter = self._parts(model)
        asked = request.get("max_tokens")
        max_tokens = asked if type(asked) is int and asked > 0 else DEFAULT_MAX_TOKENS
        key = LimitKey.of(self.settings.llm.provider or "", model, api_key_of(self.settings))
        deadline = time.monotonic() + model_timeout(self.settings, MODEL_PREFIX + model)

        async def once() -> dict[str, Any]:
            try:
                if writer is not None and hasattr(provider, "stream"):
                    return await _streamed(provider, request, writer)
                return response_dict(await provider.complete(request))
            except ProviderHTTPError as exc:
                if exc.status != 429:
                    raise
                raise ProviderRateLimited(str(exc), retry_after=exc.retry_after) from exc

        estimate = estimate_prompt(request) + max_tokens
        return await call_limited(
            limiter, key, estimate, once, usage=lambda response: _tokens(response, estimate),
            timeout=max(0.0, deadline - time.monotonic()),
        )

    async def settle_through_outage(self, backend: Backend, job: Any, response: dict[str, Any], outage: float) -> None:
        """``settle``, asked again while Redis is away (pauses doubling from 0.2 s to ``FINISH_PAUSE_MAX``, as
        the step's finish is: ``castor.fleet.restart`` counts on that) for up to ``outage`` seconds. The call
        was made and paid for: a settle that found Redis away must not lose its answer (the step would go in
        doubt and the model be called, and charged, again). Past ``outage``, or should the settle fail otherwise,
        the step keeps its reservation as its charge, which the ledgers hold already, and is journaled with it."""
        pause, until = 0.2, time.monotonic() + outage
        while True:
            try:
                await self.settle(backend, job, response)
                return
            except BackendUnavailable as exc:
                if time.monotonic() + pause > until:
                    _keep_reservation(job, f"Redis away past the outage deadline ({exc})")
                    return
                log.warning("run %s step %d: settling the model call's charge lost Redis (%s); asking again in %gs",
                            job.run_id, job.step, exc, pause)
                await asyncio.sleep(pause)
                pause = min(FINISH_PAUSE_MAX, pause * 2)
            except Exception as exc:  # the settle is atomic in Redis: it did not happen, the reservation stands
                _keep_reservation(job, f"the settle failed: {type(exc).__name__}: {exc}")
                return

    async def settle(self, backend: Backend, job: Any, response: dict[str, Any]) -> None:
        """Settle the step's reservation to the usage ``response`` reports (an offline estimate, marked, if
        it reports none) and make it the step's charge, as the embedded kernel does before it journals."""
        model = job.tool_name[len(MODEL_PREFIX):]
        input_tokens, output_tokens, estimated = usage_from(response, job.arguments["request"])
        if estimated:
            response["usage"] = {"input_tokens": input_tokens, "output_tokens": output_tokens, "estimated": True}
        actual = cost_of_tokens(self.prices.get(model), input_tokens, output_tokens)
        reserved = job.charged or {}
        if reserved:  # only what the run's ledgers track was reserved (castor.kernel.model.budget)
            settle = getattr(backend.budgets, "settle", None)
            # A call in doubt made again holds the first call's charge too: it stays (castor.kernel.model_doubt).
            spent = (job.checked or {}).get("spent") or {}
            if settle is not None:
                await settle(job.run_id, job.step, {r: actual.get(r, 0.0) + spent.get(r, 0.0) for r in reserved})
        if job.usage is not None:
            job.usage = usage_after(job.usage, actual)
        job.charged = actual


def _keep_reservation(job: Any, why: str) -> None:
    """The step's reservation is its charge (the ledgers hold it already): the answer, made and paid for, is
    journaled with it rather than lost (the step in doubt would call the model, and charge it, again)."""
    log.warning("run %s step %d: the model call keeps its reservation as its charge: %s", job.run_id, job.step, why)
    if job.usage is not None:
        job.usage = usage_after(job.usage, job.charged or {})


async def _streamed(provider: Any, request: dict[str, Any], writer: ChunkWriter) -> dict[str, Any]:
    """The provider's stream: each chunk of text forwarded as it comes, then the end; its whole response."""
    final = None
    async for item in provider.stream(request):
        if isinstance(item, str):
            if item:
                await writer.write(item)
        else:
            final = item
    if final is None:
        raise ModelCallError("the provider's stream ended without its response")
    await writer.end()
    return response_dict(final)


def _tokens(response: dict[str, Any], estimate: int) -> int:
    """The tokens the provider reported for the rate limit's window; the reservation's ``estimate`` if none."""
    usage = response.get("usage")
    if not isinstance(usage, dict) or usage.get("estimated"):
        return estimate
    return int(usage.get("input_tokens") or 0) + int(usage.get("output_tokens") or 0)


def is_model_task(tool: str) -> bool:
    """Whether a task's tool is a model step."""
    return tool.startswith(MODEL_PREFIX)
