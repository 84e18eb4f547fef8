"""``Castor``: the operator's handle on the kernel. It builds the kernel's ``Services`` (the tools, the
backend, the executor, the agents and the syscall handler chain), drives runs, and takes human decisions.

The syscall handler chain is in ``castor.kernel.chain``; driving one run (context, status, persistence)
in ``castor.kernel.runner``; human decisions in ``castor.kernel.approvals``.
"""

from __future__ import annotations

import asyncio
import math
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from castor._sealing import DataKey
from castor.agents import AgentRegistry, default_agent_registry
from castor.backends import open_backend
from castor.checkpoint import AgentCheckpoint
from castor.compat import legacy_tools
from castor.errors import CastorWarning, ConfigError, UnsupportedError
from castor.executors.local import LocalExecutor
from castor.kernel import approvals, children, runner
from castor.kernel.chain import build_chain
from castor.kernel.context import Handler, Interceptor, Services
from castor.kernel.model import ModelServices, build_model_chain
from castor.kernel.model_doubt import check_policy
from castor.kernel.model_pool import on_pool
from castor.kernel.runner import CastorTask
from castor.llm.cost import TOKEN_RESOURCES, price_table
from castor.llm.wrapper import LLMSyscall
from castor.registry import SyscallGate, ToolRegistry
from castor.seams import Backend, Executor, JournalBinding
from castor.summary import ExecutionSummary, scan

LLM_TOOL = "llm_inference"

__all__ = ["Castor", "CastorWarning"]


class Castor:
    """The kernel: every tool call an agent makes through ``castor.lib`` passes through it."""

    def __init__(
        self,
        *,
        tools: Iterable[Any] | None = None,
        destructive: Iterable[str] | None = None,
        llm: Any = None,  # a castor.llm provider, or 0.5.1's model function (the tool llm_inference)
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
        interceptors: Sequence[Interceptor] = (),
        llm_prices: Mapping[str, Any] | None = None,
        llm_timeout: float | None = None,
        llm_in_doubt: str | None = None,  # a model call whose process was lost: "retry", "ask" or "fail"
        mmu: Any = None,
        **compat: Any,
    ) -> None:
        mmu = _check_mmu(mmu if mmu is not None else compat.pop("lodge", None))
        gated = legacy_tools(compat)
        tools_ = ToolRegistry([*(tools or ()), *gated], destructive=destructive or (), costs=costs)
        provider = llm if _is_provider(llm) else None
        if provider is not None and (llm_cost != 1.0 or llm_resource != "api"):
            raise ConfigError(
                "llm_cost= and llm_resource= price 0.5.1's model function; a castor.llm provider's calls are charged "
                "the tokens they use (budgets input_tokens, output_tokens, tokens; usd with llm_prices=)"
            )
        # 0.5.1's model function is the tool llm_inference (kernel.llm.infer calls it); a provider is kernel.llm.
        self.llm: Any = provider
        if llm is not None and provider is None:
            self.llm = LLMSyscall(call_fn=llm, consumes=llm_resource, cost_per_use=llm_cost, tool_name=LLM_TOOL)
            if LLM_TOOL not in tools_:  # castor-kernel 0.5.1 dropped it unless tools= was given
                tools_.add(self.llm)
        tools_.check_destructive()
        self.scopes = tuple(scopes)
        self.budgets = dict(default_budgets or {})
        self.budgets.update(budgets or {})
        if auto_budget is not None:
            for resource in tools_.consumed_resources() - set(tools_.names()):
                self.budgets.setdefault(resource, float(auto_budget))
        self._check_budgets(tools_, self.budgets, stacklevel=3)
        backend = store if isinstance(store, Backend) else open_backend(store)
        if executor is None:
            built: Executor = LocalExecutor(tools_)
        elif callable(executor) and not hasattr(executor, "execute"):
            built = executor(tools_)
        else:
            built = executor  # type: ignore[assignment]
        if isinstance(built, JournalBinding):
            built.bind_journal(backend.journal)  # it consults the kernel's journal when a reply is late
        if llm is None:  # a fleet executor's [llm] pool answers the kernel's model calls (castor.llm.fleet)
            provider = getattr(built, "model_provider", None)
            if provider is not None:
                llm_prices = getattr(provider, "prices", None) if llm_prices is None else llm_prices
                llm_timeout = getattr(provider, "timeout", None) if llm_timeout is None else llm_timeout
        self.services = Services(
            tools=tools_,
            backend=backend,
            executor=built,
            agents=agent_registry or default_agent_registry,
            chain=build_chain(interceptors),
            # Seals sensitive arguments in the journal and in pending calls (castor._sealing).
            data_key=backend.data_key or DataKey.ephemeral(),
            spawn=children.spawn,
            join=children.join,
            structured_results=structured_results,
            # Model calls (castor.lib.model_call, complete, chat with a provider): their own stages after replay.
            models=ModelServices(
                provider=provider,
                prices=price_table(llm_prices),
                timeout=llm_timeout,
                chain=build_model_chain(interceptors),
                default_model=str(getattr(provider, "model", "") or ""),
                on_pool=built.writes_journal and getattr(built, "model_provider", None) is not None,
                pool_call=on_pool,
                # A fleet executor brings its config's [llm] in_doubt.
                in_doubt=check_policy(llm_in_doubt or getattr(built, "model_in_doubt", None) or "retry"),
            ),
            # Checkpoints this kernel drove, while someone still holds them: the store has the rest, so a
            # long-lived kernel (a coordinator) does not keep every run it ever drove in memory.
            live=weakref.WeakValueDictionary(),
            mmu=mmu,
        )
        self.background: set[asyncio.Task[Any]] = set()

    # --- what the kernel is made of (read-only: fixed when it is built) ---------------------------

    @property
    def tools(self) -> ToolRegistry:
        """The tools agents may call."""
        return self.services.tools

    @property
    def gate(self) -> SyscallGate:
        """castor-kernel 0.5.1's view of the tools: ``has_tool``, ``list_tools``, ``get_tool_meta``, ``validate``."""
        return SyscallGate(self.services.tools)

    @property
    def backend(self) -> Backend:
        """The store: journal, budgets, approvals, run headers."""
        return self.services.backend

    @property
    def executor(self) -> Executor:
        """Where tool calls run."""
        return self.services.executor

    @property
    def agents(self) -> AgentRegistry:
        """The agents ``spawn`` can start."""
        return self.services.agents

    @property
    def chain(self) -> Handler:
        """The syscall handler chain every tool call passes (``castor.kernel.chain``)."""
        return self.services.chain

    @property
    def data_key(self) -> DataKey:
        """The key that seals sensitive arguments in this kernel's store (``castor._sealing``)."""
        return self.services.data_key

    @property
    def mmu(self) -> Any:
        """The context-window MMU (``castor.mmu.MMU``), or None."""
        return self.services.mmu

    @property
    def structured_results(self) -> bool:
        """Whether agents receive ``SyscallResult`` values instead of raw responses."""
        return self.services.structured_results

    @property
    def live(self) -> MutableMapping[str, AgentCheckpoint]:
        """Checkpoints this kernel drove that someone still holds, by pid."""
        return self.services.live

    # --- configuration checks ---------------------------------------------------------------------

    def check_budgets(self, budgets: Mapping[str, float], *, stacklevel: int = 2) -> None:
        """Reject malformed budgets; warn about a key that limits nothing."""
        self._check_budgets(self.tools, budgets, stacklevel=stacklevel + 1)

    @staticmethod
    def _check_budgets(tools: ToolRegistry, budgets: Mapping[str, float], *, stacklevel: int) -> None:
        known = tools.consumed_resources() | set(TOKEN_RESOURCES)  # model calls draw tokens and dollars
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
        return await runner.run(
            self.services, agent, budgets=budgets, checkpoint=checkpoint, pid=pid, speculative=speculative,
            scopes=scopes, default_budgets=self.budgets, default_scopes=self.scopes,
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
    ) -> CastorTask:
        """Start a run in the background; ``preempt`` can stop it."""
        return await runner.start(
            self.services, agent, budgets=budgets, checkpoint=checkpoint, pid=pid, speculative=speculative,
            default_budgets=self.budgets, default_scopes=self.scopes,
        )

    def preempt(self, task: CastorTask, reason: str, payload: dict[str, Any] | None = None) -> None:
        """Stop a background run: it ends ``PREEMPTED``; the interrupted call is refunded, not journaled."""
        task.preempt(reason, payload)

    # --- decisions --------------------------------------------------------------------------------

    async def approve(self, checkpoint: AgentCheckpoint | str, *, by: str | None = None) -> AgentCheckpoint:
        """Approve the pending call and execute it now; the run is ``RUNNING`` again, ready to resume. The
        checkpoint given is updated in place (0.5.1's contract) and returned, so ``cp = await
        kernel.approve(cp)`` reads as it does."""
        return await self.decide(checkpoint, "approve", None, by=by)

    def reject(self, checkpoint: AgentCheckpoint | str, reason: str, *, by: str | None = None) -> None:
        """Reject the pending call; the agent receives ``HITL_REJECTED`` with ``reason`` on resume."""
        approvals.decide_sync(self.services, self.background, checkpoint, "reject", reason, by)

    def modify(self, checkpoint: AgentCheckpoint | str, feedback: str, *, by: str | None = None) -> None:
        """Answer the pending call with ``feedback`` instead of running it (``HITL_MODIFIED``)."""
        approvals.decide_sync(self.services, self.background, checkpoint, "modify", feedback, by)

    async def decide(
        self, checkpoint: AgentCheckpoint | str, decision: str, feedback: str | None = None, *,
        by: str | None = None,
    ) -> AgentCheckpoint:
        """Record ``approve`` / ``reject`` / ``modify`` on the pending call; returns the updated checkpoint."""
        await self.flush()
        return await approvals.decide(self.services, checkpoint, decision, feedback, by)

    # --- inspection and persistence ---------------------------------------------------------------

    def scan(self, checkpoint: AgentCheckpoint) -> ExecutionSummary:
        """Which steps ran speculatively and need review, which a human decided."""
        return scan(checkpoint)

    async def save(self, checkpoint: AgentCheckpoint) -> None:
        """Persist the checkpoint (header and journal) in the kernel's store."""
        await self.flush()
        await runner.persist_all(self.services, checkpoint)

    def load(self, pid: str) -> AgentCheckpoint:
        """The checkpoint of ``pid`` from the store (``RunNotFoundError`` if there is none)."""
        cp = self.live.get(pid)
        if cp is not None:
            return cp
        return approvals.run_now(self.aload(pid), "kernel.load()")

    async def aload(self, pid: str) -> AgentCheckpoint:
        """The checkpoint of ``pid`` with its journal, read from the store."""
        return await runner.load(self.services, pid)

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


def _check_mmu(mmu: Any) -> Any:
    """``Castor(mmu=...)`` / 0.5.1's ``lodge=``: a ``castor.mmu.MMU`` (None, False: none)."""
    if not mmu:
        return None
    from castor.mmu.core import MMU

    if not isinstance(mmu, MMU):
        raise UnsupportedError(
            f"Castor(mmu=/lodge=) takes castor.MMU(...) (castor.mmu.MMU), not {type(mmu).__name__}: "
            "a custom MMU is not supported; give MMU a driver of your own (castor.mmu.MemoryDriver)"
        )
    return mmu


def _is_provider(llm: Any) -> bool:
    """A ``castor.llm`` provider (an object with ``complete``) rather than 0.5.1's plain model function."""
    if llm is None:
        return False
    if callable(getattr(llm, "complete", None)):
        return True
    if callable(llm):
        return False
    raise ConfigError(f"llm must be a castor.llm provider or an async function, got {llm!r}")
