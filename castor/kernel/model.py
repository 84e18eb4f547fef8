"""The model syscall: a model call as one step of the syscall handler chain.

    replay → interceptors → validate → (no gate) → budget: reserve → execute: call, settle, journal

A model call is a ``ModelSyscall`` (a ``Syscall`` whose tool name is ``model:<model id>`` and whose
arguments are ``{"request": <canonical request>}``), so replay and the declared interceptors are the very
stages tool calls pass: a journaled step is served from the journal without calling the model, and a
different request at that step raises ``ReplayDivergenceError`` naming it. The model stages differ from a
tool's where a model differs: it is never gated (a model call changes nothing outside), and its cost is
known only after it answers, so the budget stage reserves the most the call may cost (the prompt's
estimate plus ``max_tokens``) and ``execute`` settles the charge to the usage the provider reported,
atomically in the store, before the step is journaled with that charge. Tool calls do not pass here:
their chain (``castor.kernel.chain``) is unchanged.

Where the call is made: in a fleet whose config names a model provider (``[llm] provider``), a call of the
kernel's provider goes to the executor, which sends it to a worker of ``[llm] pool``; that worker calls the
provider under the fleet's rate limits, settles the reservation and journals the step with the same record
builder (``castor.fleet.workers._models``), and this process takes the journaled record. Anything else (an
embedded kernel, a model of the agent's own passed as ``invoke``) is called in this process; on a leased
store (a fleet coordinator's drive) claimed first, so the drive that takes the run over knows a call was in
flight when its process was lost. Such a call is *in doubt* (it may have been answered and billed): by
default made once more with the first call still charged, or a human decides, or it fails
(``[llm] in_doubt``: ``castor.kernel.model_doubt``). The pool's path is ``castor.kernel.model_pool``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

from castor._redact import redact
from castor.checkpoint import StepFailure, bounded_arguments
from castor.errors import BackendUnavailable
from castor.kernel.chain import wrap
from castor.kernel.claims import run_claimed
from castor.kernel.context import Handler, Interceptor, RunContext, Syscall, confirmed, outcome_unknown, unrecorded
from castor.kernel.model_doubt import claim_lost, decided, plus, recharge
from castor.kernel.steps import answer, replay
from castor.llm.cost import (
    DEFAULT_MAX_TOKENS,
    TOKEN_RESOURCES,
    FlatPrice,
    Price,
    cost_of_tokens,
    reservation,
    usage_from,
)
from castor.llm.types import (
    MalformedResponseError,
    ModelCallError,
    ModelResponse,
    ModelTimeoutError,
    naming,
    response_dict,
)

MODEL_PREFIX = "model:"
Invoke = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass(eq=False)
class ModelServices:
    """What the kernel knows of models: the default provider, the price table, the model chain."""

    provider: Any = None  # a castor.llm.Provider, or None: calls must bring their own ``invoke``
    prices: Mapping[str, Price] = field(default_factory=dict)
    timeout: float | None = None  # seconds a call may take; None: the provider's own deadline
    chain: Handler | None = None
    default_model: str = ""
    # The executor sends model calls to the fleet's [llm] pool (a Celery executor whose config names a
    # provider: castor.llm.fleet); else the kernel's provider is called in this process.
    on_pool: bool = False
    # A call whose process was lost mid-call: "retry" (made once more), "ask" (a human decides), "fail"
    # (castor.kernel.model_doubt).
    in_doubt: str = "retry"
    # How a call goes to the pool (castor.kernel.model_pool.on_pool, which builds on this module).
    pool_call: Callable[[Any], Awaitable[Any]] | None = None

    def call(
        self, ctx: RunContext, model: str, request: dict[str, Any], *, invoke: Invoke | None = None,
        max_tokens: int | None = None, timeout: float | None = None,
        partial: Callable[[], dict[str, Any] | None] | None = None, via_provider: bool | None = None,
        flat: FlatPrice | None = None, canonical: bool = False, chunk: Callable[[str], None] | None = None,
    ) -> Awaitable[Any]:
        """Run a model call at the run's next step through the model chain (``castor.lib.model_call``).

        ``canonical``: ``invoke`` returns the response as plain JSON data already (a dict the caller built
        for this call): it is journaled as it is, not walked and copied again.
        """
        assert self.chain is not None
        syscall = self.syscall(ctx, model, request, invoke=invoke, max_tokens=max_tokens, timeout=timeout,
                               partial=partial, via_provider=via_provider, flat=flat, canonical=canonical)
        syscall.chunk = chunk
        return self.chain(syscall)

    def syscall(
        self, ctx: RunContext, model: str, request: dict[str, Any], *, invoke: Invoke | None = None,
        max_tokens: int | None = None, timeout: float | None = None,
        partial: Callable[[], dict[str, Any] | None] | None = None, via_provider: bool | None = None,
        size: int | None = None, flat: FlatPrice | None = None, canonical: bool = False,
    ) -> ModelSyscall:
        """The model call at the run's next step, for ``chain`` (``size``: the request's JSON size, if known)."""
        if max_tokens is None:
            asked = request.get("max_tokens")
            max_tokens = asked if isinstance(asked, int) and not isinstance(asked, bool) else DEFAULT_MAX_TOKENS
        if max_tokens <= 0:
            raise ModelCallError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        return ModelSyscall(
            ctx, ctx.claim_step(), self, model, request, invoke, max_tokens, timeout, partial,
            invoke is None if via_provider is None else via_provider, size, flat, canonical,
        )


@dataclass(slots=True, init=False)
class ModelSyscall(Syscall):
    """A model call on its way through the model chain (made by ``ModelServices.call``, which sets its fields)."""

    models: ModelServices
    model: str
    invoke: Invoke | None
    max_tokens: int
    timeout: float | None
    settled: bool
    canonical: bool  # invoke's dict response is plain JSON already (castor.lib.model_call(canonical=True))
    via_provider: bool  # the kernel's provider answers (directly, or streamed by castor.lib.stream)
    # Streaming: called with the partial response to journal when the call fails part way (castor.lib.stream).
    partial: Callable[[], dict[str, Any] | None] | None
    size: int | None  # the request's JSON size, measured as it was copied (castor.llm.cost.plain_sized)
    # The provider's own ModelResponse when the journaled response is exactly its to_dict() (no tool calls
    # to copy, usage as reported): castor.lib.complete returns it rather than building it again.
    typed: Any
    flat: FlatPrice | None  # castor-kernel 0.5.1's price per call (castor.llm.wrapper), beside the tokens
    reserved: Mapping[str, float]  # the most the call may cost (every resource), reserved by the budget stage
    redo: bool  # the call went in doubt and is made again (castor.kernel.model_doubt)
    spent: dict[str, float] | None  # a call made again: the first call's charge, held beside the new one
    chunk: Callable[[str], None] | None  # a stream's receiver of each chunk of text (castor.lib.stream)

    def __init__(
        self, ctx: RunContext, step: int, models: ModelServices, model: str, request: dict[str, Any],
        invoke: Invoke | None, max_tokens: int, timeout: float | None,
        partial: Callable[[], dict[str, Any] | None] | None, via_provider: bool, size: int | None,
        flat: FlatPrice | None, canonical: bool,
    ) -> None:
        Syscall.__init__(self, ctx.run_id, step, MODEL_PREFIX + model, {"request": request}, ctx)
        self.models = models
        self.model = model
        self.invoke = invoke
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.partial = partial
        self.via_provider = via_provider
        self.size = size
        self.flat = flat
        self.canonical = canonical
        self.settled = False
        self.typed = None
        self.reserved = _NOTHING  # replaced, never changed in place
        self.redo = False
        self.spent = None
        self.chunk = None

    def journaled_arguments(self) -> dict[str, Any]:
        """The request as it is: a model call has no tool spec, so no sensitive values to digest."""
        return self.arguments


_NOTHING: Mapping[str, float] = {}


def build_model_chain(interceptors: Iterable[Interceptor] = ()) -> Handler:
    """The model chain: the tool chain's replay and interceptors, then the model's own stages. A call that
    raises leaves its step to the run's failure records (``castor.kernel.failed_steps``): an agent or a
    framework that catches a model's error and goes on (a fallback model, a retry) gets the step journaled
    as failed, and a replay raises the error again there."""
    chain = wrap([replay, *interceptors, validate, budget], execute)

    async def model_chain(call: Syscall) -> Any:
        try:
            if call.ctx.unjournaled_failures:  # the agent went past a failed step: journaled before this call
                await call.ctx.went_past(call.step)
            return await chain(call)
        except Exception as error:
            await call.ctx.step_failed(call, error)
            raise

    return model_chain


def is_model_step(tool_name: str) -> bool:
    """Whether a journaled step's tool name is a model call's."""
    return tool_name.startswith(MODEL_PREFIX)


# --- validate ----------------------------------------------------------------------------------


def validate(call: Syscall, inner: Handler) -> Awaitable[Any]:
    """A call needs a model to answer it, and a price where the run has a ``usd`` budget."""
    assert isinstance(call, ModelSyscall)
    models = call.models
    if call.via_provider:
        provider = models.provider
        if provider is None:
            raise ModelCallError(
                f"model call to {call.model!r} has no model: pass Castor(llm=<provider>) or invoke= to the call "
                "(on the command line: --config FILE whose [llm] section names a provider)"
            )
        known = getattr(provider, "models", None)
        if known and call.model not in known:
            raise ModelCallError(f"unknown model {call.model!r}; the provider serves: {', '.join(sorted(known))}")
    if call.flat is None and call.model not in models.prices and "usd" in call.ctx.checkpoint.capabilities:
        raise ModelCallError(
            f"no price for model {call.model!r} and the run has a 'usd' budget: add it to [llm.prices] "
            f"in castor.toml or Castor(llm_prices={{...}})"
        )
    call.checked = call.arguments
    drive = call.ctx.drive
    if drive is not None and (drive.lost or monotonic() > drive.sure_until):
        return confirmed(drive, inner, call)  # the process stalled: nothing more if the run was taken over
    return inner(call)


# --- budget: reserve ----------------------------------------------------------------------------


def _tracked(ctx: RunContext, cost: Mapping[str, float]) -> Mapping[str, float]:
    caps = ctx.checkpoint.capabilities
    if ctx.scopes or caps.keys() >= cost.keys():
        return cost
    return {r: a for r, a in cost.items() if r in caps}


def budget(call: Syscall, inner: Handler) -> Awaitable[Any]:
    """Reserve the most the call may cost; refused before the model is contacted if it cannot be covered.

    The reservation is settled by ``execute`` to the usage reported; a call that never answers is refunded.
    """
    assert isinstance(call, ModelSyscall)
    ctx = call.ctx
    caps = ctx.checkpoint.capabilities
    if ctx.scopes or not caps.keys().isdisjoint(TOKEN_RESOURCES):
        reserve = reservation(call.models.prices.get(call.model), call.arguments["request"], call.max_tokens, call.size)
        tracked = _tracked(ctx, reserve)
    else:  # nothing limits a model call: no estimate (the charge still checks a fenced run's lease)
        reserve = tracked = {}
    if call.flat is not None:
        reserve = call.flat.add_to(reserve, call.flat.cost)
        tracked = _tracked(ctx, reserve)
    if not tracked and not ctx.charges_free_calls and not ctx.checkpoint.in_doubt:
        call.charged = tracked  # nothing drawn, nothing to refund: no coroutine of this stage's on the step
        call.reserved = reserve
        return inner(call)
    return _reserved(call, inner, reserve, tracked)


async def _reserved(
    call: ModelSyscall, inner: Handler, reserve: Mapping[str, float], tracked: Mapping[str, float]
) -> Any:
    ctx = call.ctx
    charge = await ctx.budgets.charge(ctx.run_id, call.step, tracked, ctx.scopes)
    if not charge.ok:
        resource = (charge.short or "").rsplit(":", 1)[-1]
        return await answer(
            call,
            {
                "status": "INSUFFICIENT_CAPABILITY",
                "feedback_message": (
                    f"budget exhausted for '{charge.short}': {call.tool_name} may need "
                    f"{reserve.get(resource, 0):g}, {charge.remaining:g} left"
                ),
                "resource": charge.short,
            },
        )
    call.charged = tracked
    call.reserved = reserve
    try:
        in_doubt = ctx.checkpoint.in_doubt
        if in_doubt and call.step in in_doubt:  # a human was asked whether to make it again ([llm] in_doubt)
            rejected = await decided(call)
            if rejected is not None:
                return rejected
        return await inner(call)
    except BaseException as exc:
        if tracked and not call.settled and not outcome_unknown(exc):  # unknown: the model may have answered
            await ctx.budgets.refund(ctx.run_id, call.step)
        raise


# --- execute: call, settle, journal -------------------------------------------------------------


def execute(call: Syscall) -> Awaitable[Any]:
    """Call the model where it lives: on the fleet's ``llm`` pool (the kernel's provider, under a Celery
    executor), else in this process, claimed first on a leased store (a fleet coordinator's drive) so the
    drive that takes the run over never calls it, nor pays for it, a second time."""
    assert isinstance(call, ModelSyscall)
    services = call.ctx.services
    if call.via_provider and call.models.on_pool:
        return call.models.pool_call(call)  # type: ignore[misc]  # castor.kernel.model_pool.on_pool
    if services.backend.leased:  # the claim's in-doubt check may make it a call made again (call.redo)
        return run_claimed(call, _maybe_again, in_doubt=claim_lost)  # type: ignore[arg-type]
    return _maybe_again(call) if call.redo else _call_here(call)


async def _maybe_again(call: ModelSyscall) -> Any:
    """``_call_here``; for a call made again after going in doubt (``call.redo``), charged again first (the
    first call stays charged beside it)."""
    if call.redo:
        refused = await recharge(call)
        if refused is not None:
            return refused
    return await _call_here(call)


async def _call_here(call: ModelSyscall) -> Any:
    """Call the model, settle the reservation to the usage reported and journal request and response."""
    ctx = call.ctx
    models = call.models
    request: dict[str, Any] = call.arguments["request"]
    invoke = call.invoke
    if invoke is None:
        invoke, request = models.provider.complete, naming(request, call.model, models.provider)
    timeout = call.timeout if call.timeout is not None else models.timeout
    try:
        if timeout is None:
            result = await invoke(request)
        else:
            try:
                async with asyncio.timeout(timeout):
                    result = await invoke(request)
            except TimeoutError as exc:
                raise ModelTimeoutError(
                    f"model {call.model!r} did not answer within {timeout:g}s (run {ctx.run_id}, step {call.step})"
                ) from exc
        response = result if call.canonical and type(result) is dict else response_dict(result)
    except BaseException as exc:
        await record_failed(call, exc)
        raise
    # Settled and journaled here rather than in helpers: one coroutine frame on every live model step.
    input_tokens, output_tokens, estimated = usage_from(response, request)
    if estimated:
        response["usage"] = {"input_tokens": input_tokens, "output_tokens": output_tokens, "estimated": True}
    actual = cost_of_tokens(models.prices.get(call.model), input_tokens, output_tokens)
    if call.flat is not None:
        actual = call.flat.add_to(actual, call.flat.cost)
    try:
        if call.charged:
            settle_in_store = getattr(ctx.budgets, "settle", None)
            held = actual if call.spent is None else plus(call.spent, actual)
            if settle_in_store is not None:  # the store's own, awaited here: no coroutine frame of settle()'s
                await settle_in_store(ctx.run_id, call.step, held, ctx.scopes)
            else:
                await settle(call, held)
        call.settled = True
        call.charged = actual  # the record holds what the call used (the store's ledgers what they track of it)
        record = await ctx.commit(call.step, call.record(response))
    except BackendUnavailable as exc:  # the model answered (and was paid): never made again for this
        raise unrecorded(call, exc) from exc
    if type(result) is ModelResponse and not estimated and not result.tool_calls and record.response is response:
        call.typed = result
    return record.response


async def settle(call: ModelSyscall, actual: Mapping[str, float]) -> None:
    """Replace the step's reservation by ``actual`` in the store, atomically (``BudgetStore.settle``)."""
    ctx = call.ctx
    reserved = call.charged
    call.settled = True
    if not reserved:
        return  # nothing was reserved: nothing is tracked
    store = ctx.budgets
    settle_in_store = getattr(store, "settle", None)
    if settle_in_store is not None:  # each ledger settles the resources it reserved (a missing one used 0)
        await settle_in_store(ctx.run_id, call.step, actual, ctx.scopes)
    else:  # a store without settle: refund, then charge what was used (not atomic; a custom store's best)
        await store.refund(ctx.run_id, call.step)
        used = {r: actual[r] for r in reserved if actual.get(r)}
        await store.charge(ctx.run_id, call.step, used, ctx.scopes)


async def record_failed(call: ModelSyscall, exc: BaseException) -> None:
    """Journal a failed model call for audit; a stream that failed part way is charged what it received."""
    ctx = call.ctx
    partial = call.partial() if call.partial is not None else None
    if partial is None and isinstance(exc, MalformedResponseError):
        partial = exc.response  # the provider answered, unreadably: charged what it used
    if partial is not None and partial.get("text"):
        ctx.checkpoint.partial_work = str(partial["text"])  # shown by castor inspect
    used: dict[str, float] = {}
    if partial is not None:
        input_tokens, output_tokens, _ = usage_from(partial, call.arguments["request"])
        used = cost_of_tokens(call.models.prices.get(call.model), input_tokens, output_tokens)
        if call.flat is not None:
            used = call.flat.add_to(used, call.flat.part(int(partial.get("chunks") or 0)))
    if partial is not None or call.spent is not None:  # a call made again: its first call stays charged
        await settle(call, plus(call.spent, used))
    if not isinstance(exc, Exception) and not used:
        return  # cancelled or preempted with nothing to pay: the runner records the stop
    # Journaled with its charge (the run's usage counts it: StepFailure.charged), so a resumed run's budget
    # still holds what a stream stopped part way used.
    failure = StepFailure(
        step=call.step,
        tool_name=call.tool_name,
        arguments=bounded_arguments(redact(call.arguments, frozenset())),
        error_type=type(exc).__name__,
        message=(str(exc) or "stopped part way") + (f" (partial text: {partial.get('text', '')!r})" if partial else ""),
        charged=used,
    )
    for name, amount in used.items():
        ctx.spent[name] = ctx.spent.get(name, 0.0) + amount
    ctx.checkpoint.failures.append(failure)
    await ctx.services.backend.journal.record_failure(ctx.run_id, failure)
