"""What ``ps`` and ``inspect`` show of a run that is still going, as the store holds it now.

A run's header is saved when the run stops (suspends, ends, is preempted): while it runs, on a fleet
coordinator or in another ``castor run``, its header still says the steps and the budget use it started
with (``0 steps``, ``api 0/20``). The journal and the budget ledger are written at every step; this
reads them, through the seams, so it holds for every store.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace

from castor.checkpoint import AgentCheckpoint
from castor.seams import Backend, RunSummary

GOING = frozenset({"RUNNING"})


async def live_summaries(backend: Backend, runs: Iterable[RunSummary]) -> list[RunSummary]:
    """``runs``, each still going with its journal's step count."""
    shown = []
    for run in runs:
        if run.status in GOING:
            run = replace(run, steps=max(run.steps, await backend.journal.length(run.pid)))
        shown.append(run)
    return shown


async def live_budget(backend: Backend, cp: AgentCheckpoint) -> AgentCheckpoint:
    """``cp`` with the budget use its ledger holds now, if it is still going (changed in place)."""
    if cp.status not in GOING:
        return cp
    for resource, cap in cp.capabilities.items():
        left = await backend.budgets.remaining(cp.pid, resource)
        if math.isfinite(left) and math.isfinite(cap.max_budget):
            cap.current_usage = max(cap.max_budget - left, cap.current_usage, 0.0)
    return cp
