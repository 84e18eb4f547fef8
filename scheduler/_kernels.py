"""Kernels rebuilt from run specs: a coordinator drives runs of many agents with one kernel per tool set.

A run's ``RunSpec`` names its agent and tools by import spec; the kernel for those tools is built once and
shared by every run that uses them (building the argument schemas is the costly part). Each kernel is
built with one interceptor (``Castor(interceptors=[gate.stage])``), which runs right after replay: while
the coordinator drains, a live call waits there instead of starting, so the run stops at a step boundary.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

from castor.checkpoint import RunSpec
from castor.fleet.loading import load_agent, load_tools
from castor.kernel import Castor
from castor.kernel.context import Handler, Syscall
from castor.seams import Backend

from ._allowed import AllowedCode

ExecutorFactory = Callable[[Any], Any]


class DrainGate:
    """Counts live calls in flight (in all and per run); once draining, holds every new one until its run
    is stopped."""

    def __init__(self) -> None:
        self.draining = False
        self.inflight = 0
        self.runs: Counter[str] = Counter()  # root pid -> its calls in flight (a child's count as its root's)
        self._idle = asyncio.Event()
        self._idle.set()

    def busy(self, pid: str) -> bool:
        """Whether a call of ``pid`` (or of a child of it) is in flight in this process."""
        return self.runs[pid] > 0

    async def stage(self, call: Syscall, inner: Handler) -> Any:
        """The interceptor (``castor.kernel.context.Interceptor``): let a call through, or hold it while
        draining."""
        if self.draining:
            await asyncio.Event().wait()  # until the coordinator cancels the run
        root = call.ctx.run_id.partition("::")[0]
        self.inflight += 1
        self.runs[root] += 1
        self._idle.clear()
        try:
            return await inner(call)
        finally:
            self.inflight -= 1
            self.runs[root] -= 1
            if not self.runs[root]:
                del self.runs[root]
            if self.inflight == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in flight (or ``timeout``); True if idle."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


class Kernels:
    """Kernels by tool set and agents by import spec, built on first use."""

    def __init__(
        self, backend: Backend, executor: ExecutorFactory | None, gate: DrainGate, *, mmu: Any = None,
        allowed: AllowedCode | None = None,
    ) -> None:
        self.backend = backend
        self.mmu = mmu  # one context-window MMU (castor.mmu) for every kernel, or None
        self.allowed = allowed  # checked before any import of a run's code (None: anything it names)
        self.executor = executor
        self.gate = gate
        self.interceptors: list[Any] = []  # declared before the drain gate (castor.metrics adds its own)
        self._kernels: dict[tuple[tuple[str, ...], tuple[str, ...]], Castor] = {}
        self._agents: dict[str, Callable[..., Any]] = {}

    def kernel_for(self, spec: RunSpec) -> Castor:
        """The kernel with the spec's tools and destructive list."""
        key = (tuple(spec.tools), tuple(sorted(spec.destructive)))
        kernel = self._kernels.get(key)
        if kernel is None:
            if self.allowed is not None:
                self.allowed.check(spec)
            kernel = Castor(
                tools=load_tools(spec.tools), destructive=spec.destructive, store=self.backend,
                executor=self.executor, interceptors=[*self.interceptors, self.gate.stage], mmu=self.mmu,
            )
            self._kernels[key] = kernel
        return kernel

    def agent_for(self, spec: RunSpec) -> Callable[..., Any]:
        """The agent function the spec names."""
        agent = self._agents.get(spec.agent)
        if agent is None:
            if self.allowed is not None:
                self.allowed.check_agent(spec.agent)
            agent = load_agent(spec.agent)
            self._agents[spec.agent] = agent
        return agent

    def forget(self, pid: str) -> None:
        """Drop a stopped run (and its children) from every kernel: a parked run costs no memory here."""
        for kernel in self._kernels.values():
            live = kernel.live
            live.pop(pid, None)
            if live:
                for key in [k for k in live if k.startswith(f"{pid}::")]:
                    del live[key]

    async def close(self) -> None:
        """Close every kernel's executor (the backend is the coordinator's to close)."""
        for kernel in self._kernels.values():
            await kernel.executor.close()
