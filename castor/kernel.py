"""``Castor``: the operator's handle on the kernel. It owns the tools, the backend and the executor,
drives runs, and takes human decisions.

The syscall path itself is in ``castor.syscall``; driving one run (context, status, persistence) is in
``castor._runner``; decisions in ``castor._decisions``.
"""

from __future__ import annotations

import asyncio
import math
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

from castor import _decisions, _runner
from castor._errors import ConfigError, RunNotFoundError
from castor._sealing import DataKey
from castor.agents import AgentRegistry, default_agent_registry
from castor.backends import open_backend
from castor.checkpoint import AgentCheckpoint, usage_of
from castor.compat import legacy_tools
from castor.executors.local import LocalExecutor
from castor.registry import ToolRegistry
from castor.seams import Backend, Executor
from castor.summary import ExecutionSummary, scan
from castor.syscall import DEFAULT_STAGES, Handler, build_path, execute

LLM_TOOL = "llm_inference"


class CastorWarning(UserWarning):
    """A configuration that works but is probably not what the operator meant."""


class Castor:
    """The kernel: every tool call an agent makes through ``castor.lib`` passes through it."""

    def __init__(
        self,
        *,
        tools: Iterable[Any] | None = None,
        destructive: Iterable[str] | None = None,
        llm: Callable[..., Any] | None = None,
        llm_cost: float = 1.0,
        llm_resource: str = "api",
        agent_registry: AgentRegistry | None = None,
        store: str | Backend | None = None,
        budgets: Mapping[str, float] | None = None,
        default_budgets: Mapping[str, float] | None = None,
        auto_budget: float | None = None,
        structured_results: bool = False,
        costs: Mapping[str, float | Mapping[str, float]] | None = None,
        executor: Executor | Callable[[ToolRegistry], Executor] | None = None,
        scopes: Iterable[str] = (),
        **compat: Any,
    ) -> None:
        gated = legacy_tools(compat)
        self.tools = ToolRegistry([*(tools or ()), *gated], destructive=destructive or (), costs=costs)
        if llm is not None and LLM_TOOL not in self.tools:
            # The LLM is a tool like any other; castor-kernel 0.5.1 dropped it unless tools= was given.
            self.tools.add((LLM_TOOL, llm), cost={llm_resource: float(llm_cost)} if llm_cost else {})
        self.tools.check_destructive()
        self.agents = agent_registry or default_agent_registry
        self.structured_results = structured_results
        self.scopes = tuple(scopes)
        self.budgets = dict(default_budgets or {})
        self.budgets.update(budgets or {})
        if auto_budget is not None:
            for resource in self.tools.consumed_resources() - set(self.tools.names()):
                self.budgets.setdefault(resource, float(auto_budget))
        self.check_budgets(self.budgets, stacklevel=3)
        self.backend = store if isinstance(store, Backend) else open_backend(store)
        # Seals sensitive arguments in the journal and in pending calls (castor._sealing).
        self.data_key: DataKey = self.backend.data_key or DataKey.ephemeral()
        if executor is None:
            self.executor: Executor = LocalExecutor(self.tools)
        elif callable(executor) and not hasattr(executor, "execute"):
            self.executor = executor(self.tools)
        else:
            self.executor = executor  # type: ignore[assignment]
        self.path: Handler = build_path(DEFAULT_STAGES, execute)
        # Checkpoints this kernel drove, while someone still holds them: the store has the rest, so a
        # long-lived kernel (a coordinator) does not keep every run it ever drove in memory.
        self.live: MutableMapping[str, AgentCheckpoint] = weakref.WeakValueDictionary()
        self.background: set[asyncio.Task[Any]] = set()

    # --- configuration checks ---------------------------------------------------------------------

    def check_budgets(self, budgets: Mapping[str, float], *, stacklevel: int = 2) -> None:
        """Reject malformed budgets; warn about a key that limits nothing."""
        known = self.tools.consumed_resources()
        for key, value in budgets.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value) or value < 0:
                raise ConfigError(f"budget {key!r} must be a non-negative number, got {value!r}")
            if key not in known:
                warnings.warn(
                    f"budget {key!r} limits nothing: no tool consumes it and no tool has that name "
                    f"(resources consumed: {', '.join(sorted(known)) or 'none'})",
                    CastorWarning,
                    stacklevel=stacklevel,
                )

    # --- runs -------------------------------------------------------------------------------------

    async def run(
        self,
        agent: Callable[..., Any],
        *,
        budgets: Mapping[str, float] | None = None,
        checkpoint: AgentCheckpoint | None = None,
        pid: str | None = None,
        speculative: bool | None = None,
        scopes: Iterable[str] | None = None,
    ) -> AgentCheckpoint:
        """Run (or resume) ``agent`` until it completes, fails or suspends for approval.

        Resuming runs the agent again from its first line; journaled steps are served from the cache.
        ``budgets`` with a checkpoint sets new limits for those resources (a top-up); a ``pid`` other
        than the checkpoint's is an error (fork the checkpoint to run it under a new pid).
        """
        await self.flush()
        if budgets is not None:
            self.check_budgets(budgets, stacklevel=3)
        return await _runner.run(
            self, agent, budgets=budgets, checkpoint=checkpoint, pid=pid, speculative=speculative,
            scopes=scopes,
        )

    async def run_until_complete(
        self,
        agent: Callable[..., Any],
        *,
        on_hitl: Callable[[AgentCheckpoint], Any],
        budgets: Mapping[str, float] | None = None,
        pid: str | None = None,
        checkpoint: AgentCheckpoint | None = None,
        max_iterations: int = 20,
    ) -> AgentCheckpoint:
        """Run, and answer every approval with ``on_hitl`` until the run ends.

        After ``max_iterations`` answered approvals, a run that waits for one more raises
        ``RuntimeError`` (as castor-kernel 0.5.1); the run stays suspended and undecided, so it can be
        loaded by its pid and continued.
        """
        cp = await self.run(agent, budgets=budgets, checkpoint=checkpoint, pid=pid)
        for _ in range(max_iterations):
            if not cp.is_suspended:
                return cp
            decision, feedback = await on_hitl(cp)
            await self.decide(cp, decision, feedback)
            cp = await self.run(agent, checkpoint=cp)
        if cp.is_suspended:
            raise RuntimeError(
                f"run {cp.pid!r} exceeded {max_iterations} HITL iterations (max_iterations={max_iterations}) and "
                f"still waits for approval of {cp.pending_tool!r}; it stays suspended: "
                f"continue it with run(agent, checkpoint=await kernel.aload({cp.pid!r}))"
            )
        return cp

    async def run_async(
        self,
        agent: Callable[..., Any],
        *,
        budgets: Mapping[str, float] | None = None,
        checkpoint: AgentCheckpoint | None = None,
        pid: str | None = None,
        speculative: bool | None = None,
    ) -> _runner.CastorTask:
        """Start a run in the background; ``preempt`` can stop it."""
        return await _runner.start(self, agent, budgets, checkpoint, pid, speculative)

    def preempt(self, task: _runner.CastorTask, reason: str, payload: dict[str, Any] | None = None) -> None:
        """Stop a background run: it ends ``PREEMPTED``; the interrupted call is refunded, not journaled."""
        task.preempt(reason, payload)

    # --- decisions --------------------------------------------------------------------------------

    async def approve(self, checkpoint: AgentCheckpoint | str, *, by: str | None = None) -> None:
        """Approve the pending call and execute it now; the run is ``RUNNING`` again, ready to resume."""
        await _decisions.decide(self, checkpoint, "approve", None, by)

    def reject(self, checkpoint: AgentCheckpoint | str, reason: str, *, by: str | None = None) -> None:
        """Reject the pending call; the agent receives ``HITL_REJECTED`` with ``reason`` on resume."""
        _decisions.decide_sync(self, checkpoint, "reject", reason, by)

    def modify(self, checkpoint: AgentCheckpoint | str, feedback: str, *, by: str | None = None) -> None:
        """Answer the pending call with ``feedback`` instead of running it (``HITL_MODIFIED``)."""
        _decisions.decide_sync(self, checkpoint, "modify", feedback, by)

    async def decide(
        self, checkpoint: AgentCheckpoint | str, decision: str, feedback: str | None = None, *,
        by: str | None = None,
    ) -> AgentCheckpoint:
        """Record ``approve`` / ``reject`` / ``modify`` on the pending call; returns the updated checkpoint."""
        return await _decisions.decide(self, checkpoint, decision, feedback, by)

    # --- inspection and persistence ---------------------------------------------------------------

    def scan(self, checkpoint: AgentCheckpoint) -> ExecutionSummary:
        """Which steps ran speculatively and need review, which a human decided."""
        return scan(checkpoint)

    async def save(self, checkpoint: AgentCheckpoint) -> None:
        """Persist the checkpoint (header and journal) in the kernel's store."""
        await self.flush()
        await _runner.persist_all(self, checkpoint)

    def load(self, pid: str) -> AgentCheckpoint:
        """The checkpoint of ``pid`` from the store (``RunNotFoundError`` if there is none)."""
        cp = self.live.get(pid)
        if cp is not None:
            return cp
        return _decisions.run_now(self.aload(pid), "kernel.load()")

    async def aload(self, pid: str) -> AgentCheckpoint:
        """The checkpoint of ``pid`` with its journal, read from the store."""
        header = await self.backend.runs.load(pid)
        if header is None:
            raise RunNotFoundError(pid)
        header.syscall_log = await self.backend.journal.history(pid)
        header.failures = await self.backend.journal.failures(pid)
        used = usage_of(header.syscall_log)  # the journal is the truth of what was charged
        for resource, cap in header.capabilities.items():
            cap.current_usage = used.get(resource, 0.0)
        return header

    async def flush(self) -> None:
        """Wait for decisions taken synchronously inside a running loop to reach the store."""
        while self.background:
            tasks = list(self.background)
            self.background.clear()
            await asyncio.gather(*tasks)

    async def close(self) -> None:
        """Release the executor and the backend's connections."""
        await self.flush()
        await self.executor.close()
        await self.backend.close()
