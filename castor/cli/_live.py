"""What ``ps`` shows of a run that is still going, as the store holds it now.

A run's header is saved when the run stops (suspends, ends, is preempted): while it runs, on a fleet
coordinator or in another ``castor run``, its header still says the steps it started with (``0 steps``).
The journal is written at every step; this reads its length through the seam, so it holds for every store.
(``inspect`` loads the run with its journal, and the budgets' usage from it: ``castor._terminal.stored_run``.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

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

