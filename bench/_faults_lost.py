"""Faults whose call is lost and noticed only at its deadline: a worker SIGKILLed mid-call, and Redis down
for longer than the call's deadline. Their calls are the ``fx_lost_*`` tools, whose short timeout (the
harness's config) keeps that deadline near the coordinator's reply grace; while it runs out, the faults
that kill nothing (forgeries, approve+resume races) run next to them (``alongside``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from bench._faults_crash import kill_worker, submit, trial, verdict
from bench._faults_fleet import FaultFleet
from bench._faults_observe import Plan, Row, journals, open_calls, running, settle, snapshot, wait_until

ONCE, IDEM = ("lost_job", "fx_lost_once"), ("lost_idem_job", "fx_lost_idem")


def worker_rows(fleet: FaultFleet, plan: Plan, chosen: Callable[[str], bool],
                alongside: Callable[[], None]) -> list[Row]:
    """The worker process running a call SIGKILLed, ``plan.trials`` times (non-idempotent and idempotent
    calls alternately). A non-idempotent trial and an idempotent one run at once, on different runs, tools
    and pools; the second starts once the first's kill is in, so that no kill meets a call of the other
    trial. ``alongside()`` is called once the last kills are in (at once if this family is not chosen):
    what it starts runs while their deadlines run out, and meets no further worker kill."""
    if not chosen("worker"):
        alongside()
        return []
    row, started = Row("worker SIGKILL mid-tool"), time.monotonic()
    settle_for = fleet.timing.lost_deadline + 4 * fleet.timing.long + 40
    waves = list(plan.waves(row, 2))
    for n, wave in enumerate(waves):
        done = [threading.Event() for _ in wave]
        with ThreadPoolExecutor(len(wave)) as pool:
            futures = []
            for i, event in zip(wave, done, strict=True):
                futures.append(pool.submit(trial, fleet, row, *(ONCE, IDEM)[i % 2], kill_worker, settle_for, event.set))
                event.wait()
            if n == len(waves) - 1:
                alongside()
            for future in futures:
                future.result()
    if not waves:
        alongside()
    row.seconds = time.monotonic() - started
    return [row]


def recovered(fleet: FaultFleet, row: Row) -> bool:
    """Whether a run submitted once Redis is back completes (the fleet came back too); else a problem."""
    probe = submit(fleet, "short_job", 1)
    status = settle(fleet, probe, 4 * fleet.timing.long + 30).get(probe[0])
    if status == "COMPLETED":
        return True
    error = str((journals(fleet.cli_json, probe).get(probe[0]) or {}).get("error") or "")
    row.problems.append(f"after the outage, a new run ended {status} ({error[:200]}): the fleet did not recover")
    return False


def outage_rows(fleet: FaultFleet, plan: Plan, chosen: Callable[[str], bool]) -> list[Row]:
    """Redis down (``SHUTDOWN`` and SIGKILL alternately) for longer than the deadline of the call that was
    running: the run must end in a clear state (COMPLETED, in doubt for a human, or FAILED with a
    reason), and the call must not run twice. Slow (the deadline is the reply grace and more): full mode."""
    if not chosen("outage"):
        return []
    row, started = Row("Redis down longer than a call's deadline"), time.monotonic()
    outage = fleet.timing.lost_deadline + 4
    for i in plan.rounds(row):
        agent, tool = (ONCE, IDEM)[i % 2]
        since = time.time()
        pids = submit(fleet, agent, 2)
        found = wait_until(partial(running, fleet.records, tool, since), 60)
        before = journals(fleet.cli_json, pids)
        if found is None:
            row.problems.append(f"no call of {tool} started within 60 s: fault not injected")
        else:
            began = time.monotonic()
            fleet.stop_redis(clean=i % 4 < 2)
            if (found[0], found[1]) not in {(t, s) for t, s, _ in open_calls(fleet.records, tool, since)}:
                row.problems.append(f"the call {found[0]}:{found[1]} finished before Redis went down")
            time.sleep(max(0.0, outage - (time.monotonic() - began)))  # the fault: Redis stays down this long
            fleet.start_redis()
        outcome = settle(fleet, pids, 4 * fleet.timing.long + 60)
        verdict(fleet, row, since, pids, snapshot(before), outcome)
        if not recovered(fleet, row):
            break  # the next trials would only find the fleet as broken
    row.seconds = time.monotonic() - started
    return [row]
