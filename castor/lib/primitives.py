"""The syscall and the kernel operations an agent can ask for."""

from __future__ import annotations

import asyncio
from typing import Any

from castor.kernel.context import Suspend, Syscall, active_run
from castor.lib.models import complete, has_provider
from castor.results import wrap


async def tool(name: str, /, **kwargs: Any) -> Any:
    """Call tool ``name`` with ``kwargs`` through the kernel and return what the agent receives."""
    ctx = active_run()
    services = ctx.services
    mmu = services.mmu
    if mmu is not None and name in mmu.hooked:  # search_memory, or 0.5.1's llm_inference (room made first)
        handled = await mmu.on_tool(ctx, name, kwargs)
        if handled is not mmu.PASS:
            return handled
    call = Syscall(ctx.run_id, ctx.claim_step(), name, kwargs, ctx)
    try:
        if ctx.unjournaled_failures:  # the agent went past a failed step: journaled before this call goes out
            await ctx.went_past(call.step)
        response = await services.chain(call)
    except Exception as error:  # the agent may catch it and go on: the step is then journaled as failed
        await ctx.step_failed(call, error)
        raise
    return wrap(response) if services.structured_results else response


async def try_tool(name: str, /, **kwargs: Any) -> Any:
    """``tool``, for calls whose denial the agent expects and handles."""
    return await tool(name, **kwargs)


async def chat(prompt: str, *, system: str = "", tool_name: str = "llm_inference", model: str | None = None) -> Any:
    """Ask the kernel's model and return its text; with 0.5.1's ``Castor(llm=<function>)``, call that tool.

    With a provider (``Castor(llm=castor.llm.OpenAICompatible(...))``) this is a model syscall
    (``castor.lib.complete``); otherwise it calls tool ``tool_name`` with ``prompt`` and ``system``.
    """
    if tool_name == "llm_inference" and tool_name not in active_run().services.tools and has_provider():
        return (await complete(prompt=prompt, system=system, model=model)).text
    return await tool(tool_name, prompt=prompt, system=system)


def budget(resource: str) -> float:
    """What this run may still spend on ``resource`` (``inf`` if nothing limits it). Costs nothing."""
    return active_run().remaining(resource)


async def spawn(agent_name: str, *, capabilities: dict[str, float] | None = None) -> Any:
    """Start a child agent with part of this run's budget; returns a handle for ``join``."""
    return await active_run().spawn(agent_name, capabilities)


async def join(handle: str) -> Any:
    """Wait for a child agent and return its result; its unused budget comes back."""
    return await active_run().join(handle)


async def parallel(*tool_calls: tuple[str, dict[str, Any]]) -> list[Any]:
    """Run several tool calls concurrently; results in call order.

    Steps are numbered in call order, so a resumed run replays them at the same positions. If one call
    must wait for approval, the others still finish before the run suspends.
    """
    for entry in tool_calls:
        if not (isinstance(entry, tuple | list) and len(entry) == 2 and isinstance(entry[1], dict)):
            raise TypeError(f"parallel() takes (tool_name, arguments_dict) pairs, got {entry!r}")
    outcomes = await asyncio.gather(*(tool(name, **args) for name, args in tool_calls), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, Suspend):
            raise outcome
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return list(outcomes)
