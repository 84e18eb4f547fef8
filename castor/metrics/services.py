"""Metrics wired into the operator's services: the MCP gateway's kernel and the console's decisions.

The gateway's kernel is a kernel like a coordinator's: it gets the same ``KernelMetrics`` interceptor (its
syscalls, replayed steps, in-doubt steps and the humans' time to decision). The console decides calls
but runs none: its ``Console.decide`` is wrapped to count what it recorded and how long the call waited.
"""

from __future__ import annotations

import contextlib
from typing import Any

from . import instruments
from ._instruments import DECISIONS
from ._kernel import KernelMetrics


def gateway_metrics(settings: Any = None) -> KernelMetrics:
    """The interceptor of the gateway's kernel (``Castor(interceptors=[...])``): its syscalls by the pools
    of ``settings`` when its tools run on the fleet's workers, else in pool ``local``."""
    return KernelMetrics(instruments(), settings.pool_of if settings is not None else None)


def instrument_console(console: Any) -> None:
    """Count the decisions ``console`` (a ``castor.console.service.Console``) records, by decision, and
    time each from its call's approval request to the decision."""
    ins = instruments()
    for decision in DECISIONS:  # every series from the first scrape on: a rate() needs the zero before
        ins.console_decisions.labels(decision)
        ins.console_decision_seconds.labels(decision)
    decide = console.decide

    async def counted(pid: str, outcome: Any, by: str, text: str = "") -> dict[str, Any]:
        decided: dict[str, Any] = await decide(pid, outcome, by, text)
        # The store returns only a decision it recorded now (a decided round raises AlreadyDecidedError).
        decision = str(decided["outcome"])
        if decision in DECISIONS:
            ins.console_decisions.labels(decision).inc()
            await _observe_wait(console.backend, decided, ins.console_decision_seconds.labels(decision))
        return decided

    console.decide = counted


async def _observe_wait(backend: Any, decided: dict[str, Any], histogram: Any) -> None:
    """Observe how long the decided call waited; a store error only loses the sample, never the decision."""
    with contextlib.suppress(Exception):
        asked = await backend.approvals.decided_request(decided["pid"], decided["step"])
        if asked is not None:
            histogram.observe(max(float(decided["at"]) - asked.created_at, 0.0))
