"""The legacy agent style: an agent that takes one parameter receives a ``SyscallProxy``."""

from __future__ import annotations

from typing import Any

from castor.checkpoint import AgentCheckpoint
from castor.errors import UnsupportedError
from castor.kernel.context import RunContext
from castor.lib import primitives


class SyscallProxy:
    """``proxy.syscall(name, args)``, ``proxy.syscall(name, **kwargs)`` and ``proxy.<tool>(**kwargs)``."""

    def __init__(self, ctx: RunContext, *legacy: Any, **options: Any) -> None:
        if not isinstance(ctx, RunContext) or legacy or options:
            # castor-kernel 0.5.1 let code wire a proxy by hand: SyscallProxy(checkpoint, gate, cap_mgr, ...).
            raise UnsupportedError(
                "SyscallProxy(checkpoint, gate, ...) (castor-kernel 0.5.1) is not provided: the kernel builds the "
                "proxy; run the agent with Castor(...).run(agent, checkpoint=checkpoint) (an agent that takes one "
                "parameter receives it; castor.lib._context.get_proxy() returns the current run's)"
            )
        self._ctx = ctx

    async def syscall(self, name: str, args: dict[str, Any] | None = None, /, **kwargs: Any) -> Any:
        """Call a tool through the kernel."""
        if args is not None:
            if not isinstance(args, dict):
                raise TypeError(f"syscall() arguments must be a dict, got {type(args).__name__}")
            kwargs = {**args, **kwargs}
        return await primitives.tool(name, **kwargs)

    async def call(self, name: str, **kwargs: Any) -> Any:
        """Alias of ``syscall(name, **kwargs)``."""
        return await primitives.tool(name, **kwargs)

    @property
    def preemption_context(self) -> dict[str, Any] | None:
        """``{"reason", "payload", "partial_work"}`` when this run resumes after a preemption, else None."""
        return self._ctx.preemption_context

    def clear_preemption_context(self) -> None:
        """Forget the preemption context once the agent has handled it."""
        self._ctx.preemption_context = None

    def charge_partial(self, resource: str, amount: float) -> None:
        """castor-kernel 0.5.1's charge outside any step: refused (every charge here belongs to a journaled call)."""
        raise UnsupportedError(
            "proxy.charge_partial() (castor-kernel 0.5.1) is not provided: a stream stopped part way is charged by "
            "the kernel for what it received (StreamingLLMSyscall(cost_per_token=...), castor.lib.stream)"
        )

    @property
    def checkpoint(self) -> AgentCheckpoint:
        """The run's checkpoint as it stands: its journal so far, its budgets used up to the last journaled
        step (brought up to date on each read). Read it; do not change it."""
        self._ctx.update_capabilities()
        return self._ctx.checkpoint

    @property
    def is_replaying(self) -> bool:
        """True while the next call will be served from the journal."""
        return self._ctx.next_step < len(self._ctx.checkpoint.syscall_log)

    def budget(self, resource: str) -> float:
        """What the run may still spend on ``resource``."""
        return self._ctx.remaining(resource)

    async def spawn(self, agent_name: str, *, capabilities: dict[str, float] | None = None) -> Any:
        """Start a child agent."""
        return await primitives.spawn(agent_name, capabilities=capabilities)

    async def join(self, handle: str) -> Any:
        """Wait for a child agent."""
        return await primitives.join(handle)

    async def spawn_sync(self, agent_name: str, *, capabilities: dict[str, float] | None = None) -> Any:
        """Start a child agent and wait for its result (``join(spawn(...))``)."""
        return await primitives.join(await primitives.spawn(agent_name, capabilities=capabilities))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        async def call_tool(**kwargs: Any) -> Any:
            return await primitives.tool(name, **kwargs)

        call_tool.__name__ = name
        return call_tool
