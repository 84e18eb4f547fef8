"""The kernel's metrics, declared as an interceptor: a kernel built without it pays nothing.

``KernelMetrics`` sits before replay (``sees_replay``), so it counts replayed steps too; a replayed step
costs it a length check and a counter update. A live step is timed through the rest of the chain and
counted by what became of it. A call a human decided is also timed from its approval request to the
decision (two store reads, on human-decided calls only).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from castor._imports import source_of
from castor.kernel.context import Handler, Syscall

from ._instruments import DECISIONS, UNKNOWN, Instruments
from .outcomes import failure_of, outcome_of


class KernelMetrics:
    """The interceptor (``Castor(interceptors=[KernelMetrics(...)])``): counts and times every syscall."""

    sees_replay = True  # placed before replay by castor.kernel.chain.build_chain

    def __init__(self, instruments: Instruments, pool_of: Callable[..., str] | None = None) -> None:
        self.instruments = instruments
        # pool_of(tool), or pool_of(tool, source) for a tool of a source of tools (``Settings.pool_of``)
        self.pool_of = pool_of or (lambda tool, source=None: "local")
        self._replayed = instruments.replayed
        self._syscalls = instruments.syscalls
        self._labels: dict[str, tuple[str, str, Any]] = {}  # known tool -> (tool, pool, histogram child)

    def __call__(self, call: Syscall, inner: Handler) -> Awaitable[Any]:
        """Count a replayed step and pass it on; time a live one."""
        if call.step < len(call.ctx.checkpoint.syscall_log):
            # Bounded without a lookup: replay serves a step only if the agent calls the very tool the
            # journal recorded, and only a tool some registry had is ever journaled (validate runs first).
            self._replayed[call.tool_name] += 1
            return inner(call)
        return self._live(call, inner)

    async def _live(self, call: Syscall, inner: Handler) -> Any:
        start = time.perf_counter()
        try:
            response = await inner(call)
        except BaseException as exc:
            self._done(call, failure_of(exc), start)
            raise
        self._done(call, outcome_of(response), start)
        if call.was_hitl:
            await self._decision_time(call)
        return response

    def _done(self, call: Syscall, outcome: str, start: float) -> None:
        tool, pool, seconds = self._label(call)
        seconds.observe(time.perf_counter() - start)
        self._syscalls[(tool, pool, outcome)] += 1
        if outcome == "in_doubt":
            self.instruments.in_doubt[(tool, pool)] += 1

    def _label(self, call: Syscall) -> tuple[str, str, Any]:
        """(tool, pool, latency histogram) of the call: a name the kernel's registry lacks is ``unknown``,
        and is not cached (an agent may call any number of unknown names)."""
        labels = self._labels.get(call.tool_name)
        if labels is None:
            spec = call.ctx.services.tools.find(call.tool_name)
            if spec is None:
                tool = pool = UNKNOWN
            else:
                tool, source = call.tool_name, source_of(spec.func)
                pool = self.pool_of(tool) if source is None else self.pool_of(tool, source)
            labels = (tool, pool, self.instruments.syscall_seconds.labels(tool, pool))
            if spec is not None:
                self._labels[tool] = labels
        return labels

    async def _decision_time(self, call: Syscall) -> None:
        """Observe how long the human took: never fails the call (a store error only loses the sample)."""
        approvals = call.ctx.services.backend.approvals
        with contextlib.suppress(Exception):
            decision = await approvals.decision(call.ctx.run_id, call.step)
            asked = await approvals.decided_request(call.ctx.run_id, call.step)
            if decision is None or asked is None or decision.outcome not in DECISIONS:
                return
            tool = self._label(call)[0]
            waited = max(decision.at - asked.created_at, 0.0)
            self.instruments.decision_seconds.labels(tool, decision.outcome).observe(waited)
