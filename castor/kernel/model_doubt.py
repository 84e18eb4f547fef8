"""A model call in doubt: its process was lost mid-call, so nobody knows whether the provider answered it.

A model call changes nothing outside but its cost, so by default (``[llm] in_doubt = "retry"``,
``Castor(llm_in_doubt=...)``) it is made once more, and the first call stays charged: the provider may
have answered and billed it. Its reservation (the most it could have cost) is journaled as a failure of
the step carrying that charge, so the run's usage and every ledger it drew from hold both calls: the
first one's reservation and the second one's reported usage. A call in doubt a second time fails. The
other policies: ``"ask"`` opens a new approval round like a tool in doubt (approve: the call is made
again, charged as above; reject: the step is journaled as ``HITL_REJECTED`` charged the first call's
reservation, and the agent gets a ``ModelCallError`` with the reason), ``"fail"`` fails the step with
``InDoubtError`` (its reservation refunded).

Two ways a call goes in doubt, one answer: a call this process made under a claim (a fleet coordinator's
own model, ``castor.kernel.claims``) whose holder is gone, and a call of the ``llm`` pool whose worker was
lost (the executor raises ``InDoubtError``). A stream that already gave the agent part of its text is not
made again (the agent cannot take its chunks back): it fails, charged what it received.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from castor._redact import redact
from castor.checkpoint import StepFailure, bounded_arguments
from castor.errors import ConfigError, InDoubtError
from castor.kernel.claims import IN_DOUBT_UNFINISHED
from castor.kernel.steps import IN_DOUBT_REASON, answer, suspend_for_human
from castor.seams import StepClaim

# The calls here are castor.kernel.model's ModelSyscall (typed Any: that module builds on this one).
ModelSyscall = Any

POLICIES = ("retry", "ask", "fail")
REMADE = "in doubt, made again"  # the message of the failure that carries the first call's charge
REJECTED = "HITL_REJECTED"


def check_policy(policy: str) -> str:
    """``policy`` if it is one of ``retry``, ``ask``, ``fail``; else a ``ConfigError`` naming them."""
    if policy not in POLICIES:
        raise ConfigError(f"llm_in_doubt must be one of {', '.join(POLICIES)}; got {policy!r}")
    return policy


def remade(call: ModelSyscall) -> int:
    """How often the step was made again after going in doubt (its journaled ``REMADE`` failures)."""
    failures = call.ctx.checkpoint.failures
    if not failures:
        return 0
    return sum(1 for f in failures if f.step == call.step and f.error_type == "InDoubtError"
               and f.message.startswith(REMADE))


def _streamed(call: ModelSyscall) -> bool:
    """Whether the agent has part of the call's text already (a stream that yielded chunks)."""
    return call.partial is not None and call.partial() is not None


async def _journal(call: ModelSyscall, message: str, charged: Mapping[str, float] | None = None) -> None:
    ctx = call.ctx
    failure = StepFailure(step=call.step, tool_name=call.tool_name,
                          arguments=bounded_arguments(redact(call.arguments, frozenset())),
                          error_type="InDoubtError", message=message, charged=dict(charged or {}))
    for name, amount in failure.charged.items():
        ctx.spent[name] = ctx.spent.get(name, 0.0) + amount
    ctx.checkpoint.failures.append(failure)
    await ctx.services.backend.journal.record_failure(ctx.run_id, failure)


async def in_doubt(call: ModelSyscall, why: str, attempt: int) -> bool:
    """Answer a model call found in doubt (``why`` says how; ``attempt``: the round that went in doubt):
    True to make it again now (``call.redo`` set, ``call.attempt`` the next round); else it raises (fail) or
    suspends the run for a human (ask)."""
    policy = call.models.in_doubt
    ctx = call.ctx
    message = f"{IN_DOUBT_UNFINISHED}: {why}; it may have been answered and billed"
    if policy == "retry" and not _streamed(call) and remade(call) == 0:
        call.redo = True
        call.attempt = attempt + 1
        return True
    if policy == "ask" and not _streamed(call):
        await _journal(call, message)
        ctx.checkpoint.in_doubt[call.step] = attempt + 1
        # Its reservation is given back while the run waits (the budget stage refunds it as the run unwinds):
        # the decision charges the first call again, beside the second (approve) or alone (reject).
        await suspend_for_human(call, attempt + 1, IN_DOUBT_REASON)
    if policy == "fail":
        message += '; not made again ([llm] in_doubt = "fail")'
    elif _streamed(call):
        message += "; its stream had given the agent part of its text: not made again"
    else:
        message += "; in doubt after it was made again: not made a third time"
    if call.spent is not None:  # this call was the second: both stay charged (either may have been billed)
        await _hold(call, plus(call.spent, call.charged or {}))
        await _journal(call, message, call.reserved)
    else:
        await _journal(call, message)
    error = InDoubtError(message)
    error.failure_journaled = True
    raise error


async def claim_lost(call: Any, found: StepClaim) -> bool:
    """``run_claimed``'s answer to a model call whose claim holder is gone (its process was lost)."""
    why = (f"model call {call.tool_name!r} (run {call.ctx.run_id}, step {call.step}) was started by "
           f"{found.holder}, whose process was lost")
    return await in_doubt(call, why, max(found.attempt, call.attempt))


async def decided(call: ModelSyscall) -> Any:
    """The step went in doubt and a human was asked (``ask``): None to make the call again (approved;
    ``call.redo`` set), the rejection journaled and raised, or the run suspended again until a decision."""
    ctx = call.ctx
    reopened = ctx.checkpoint.in_doubt[call.step]
    decision = await ctx.services.backend.approvals.decision(ctx.run_id, call.step)
    if decision is None or decision.attempt < reopened:
        await suspend_for_human(call, reopened, IN_DOUBT_REASON)
    assert decision is not None
    call.was_hitl = True
    call.decided_by = decision.by
    call.attempt = decision.attempt
    if decision.outcome == "reject":
        # Journaled charged the first call's reservation: the provider may have billed it.
        return await answer(call, {"status": REJECTED, "human_feedback": decision.reason}, call.reserved)
    # Once per approved round: a drive that took the run over after the call was made again in this round
    # finds its charge journaled already (the worker running it, or its record, answers the step).
    call.redo = remade(call) < reopened
    return None


async def recharge(call: ModelSyscall) -> Any:
    """Before a call in doubt is made again: its first reservation becomes a charge of its own (journaled
    as a ``REMADE`` failure) and the new call reserves beside it, in one check-and-charge of every ledger.
    None to go on; the journaled refusal if the budget cannot cover the new call (the first stays charged)."""
    ctx = call.ctx
    first, tracked = dict(call.reserved), dict(call.charged or {})
    await _journal(call, f"{REMADE}: the first call's reservation is charged (the provider may have billed it)",
                   first)
    if not tracked:
        return None
    budgets = ctx.budgets
    # The held charge of the step (the first call's, in the ledgers of its period) is given back and taken
    # again with the new reservation beside it: one atomic check of every ledger, in its current period.
    await budgets.refund(ctx.run_id, call.step)
    both = {r: 2 * a for r, a in tracked.items()}
    charge = await budgets.charge(ctx.run_id, call.step, both, ctx.scopes)
    if charge.ok:
        call.spent = tracked
        return None
    await budgets.charge(ctx.run_id, call.step, tracked, ctx.scopes)  # the first call stays charged
    call.settled = True
    return await answer(call, {
        "status": "INSUFFICIENT_CAPABILITY", "resource": charge.short,
        "feedback_message": f"budget exhausted for '{charge.short}': {call.tool_name} in doubt cannot be made again",
    }, {})


async def _hold(call: ModelSyscall, amounts: Mapping[str, float]) -> None:
    """Settle the step's held charge to ``amounts`` (kept, not refunded, when the call fails)."""
    settle = getattr(call.ctx.budgets, "settle", None)
    if settle is not None and call.charged:
        await settle(call.ctx.run_id, call.step, amounts, call.ctx.scopes)
    call.settled = True


def plus(spent: Mapping[str, float] | None, actual: Mapping[str, float]) -> Mapping[str, float]:
    """What a step made again settles to in the store: the first call's charge and the second's usage."""
    if not spent:
        return actual
    return {r: spent.get(r, 0.0) + actual.get(r, 0.0) for r in {*spent, *actual}}
