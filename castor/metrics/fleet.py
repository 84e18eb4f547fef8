"""Metrics wired into the fleet's processes: a coordinator's kernels and leases, a worker's tasks.

Both wrap what they count rather than change it: the coordinator's kernels get a ``KernelMetrics``
interceptor and its lease operation a counting wrapper; a worker's runtime gets a timed ``handle``.
"""

from __future__ import annotations

import time
from typing import Any

from castor.fleet.wire import TASK_PREFIX

from . import add_fleet, instruments
from ._instruments import OUTCOMES, UNKNOWN
from ._kernel import KernelMetrics


def instrument_coordinator(coordinator: Any, settings: Any = None) -> KernelMetrics:
    """Count and time ``coordinator``'s syscalls (by the pools of ``settings``, else pool ``local``), its
    leases, takeovers and quarantines, and export the fleet's gauges."""
    ins = instruments()
    metrics = KernelMetrics(ins, settings.pool_of if settings is not None else None)
    coordinator.kernels.interceptors.insert(0, metrics)
    leases = ins.leases
    acquire = coordinator.ops.acquire

    async def counted(pid: str, token: str, lease_ms: int, max_takeovers: int = 3) -> tuple[str, Any]:
        status, detail = await acquire(pid, token, lease_ms, max_takeovers)
        if status in ("ok", "quarantine"):
            leases["acquired"] += 1
            if status == "quarantine":
                leases["quarantine"] += 1
            elif detail:  # its lease ran out unreleased before: this one is a takeover
                leases["takeover"] += 1
        return status, detail

    coordinator.ops.acquire = counted
    add_fleet(settings, url=coordinator.config.url, prefix=coordinator.config.prefix)
    return metrics


def instrument_worker(runtime: Any) -> None:
    """Count and time the tool tasks of ``runtime`` (a ``WorkerRuntime``) by tool, pool and outcome."""
    ins = instruments()
    known = {spec.name for spec in runtime.registry}
    pool = runtime.pool
    handle = runtime.handle
    children: dict[str, Any] = {}

    def timed(kwargs: Any, name: str, retries: int = 0, delivery: Any = None) -> Any:
        start = time.perf_counter()
        outcome = handle(kwargs, name, retries, delivery)
        tool = name[len(TASK_PREFIX):] if name.startswith(TASK_PREFIX) else ""
        tool = tool if tool in known else UNKNOWN
        seconds = children.get(tool)
        if seconds is None:
            seconds = children[tool] = ins.tool_seconds.labels(tool, pool)
        seconds.observe(time.perf_counter() - start)
        status = "retry" if outcome.retry_in is not None else outcome.status
        ins.tasks[(tool, pool, status if status in OUTCOMES else "error")] += 1
        if status == "in_doubt":
            ins.in_doubt[(tool, pool)] += 1
        return outcome

    runtime.handle = timed
