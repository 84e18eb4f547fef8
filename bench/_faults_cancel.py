"""Cancel faults: an operator cancels runs whose call waits on its pool's queue (no worker serves the pool
yet), with the coordinator that drives them alive (it withdraws the task it waited for) or SIGKILLed just
before the cancel (it withdraws nothing: the coordinator that takes the run over stores it cancelled, and
the worker's claim reads the run stopped). Then a worker for the pool starts and takes the tasks left on
the queue: it must drop each one unrun. A row holds when the queued call never ran, each run is stored
cancelled with only what ran before the cancel in its journal, and the worker dropped every task."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from bench._faults_crash import kill_coordinator, owners, submit, verdict
from bench._faults_fleet import FaultFleet
from bench._faults_observe import Plan, Row, journals, read_records, settle, snapshot, tickets_of, wait_until

POOL, TOOL = "fq", "fx_queued"
RUNS = 2  # runs a trial cancels at once


def cancel_rows(fleet: FaultFleet, plan: Plan, chosen: Callable[[str], bool]) -> list[Row]:
    """The two cancel faults, ``plan.trials`` times each."""
    if not chosen("cancel"):
        return []
    rows = []
    for fault, kill in (("cancel, call queued", False), ("cancel, call queued, coordinator SIGKILL", True)):
        row, started = Row(fault), time.monotonic()
        for _ in plan.rounds(row, kinds=1):
            trial(fleet, row, kill)
        row.seconds = time.monotonic() - started
        rows.append(row)
    return rows


def trial(fleet: FaultFleet, row: Row, kill: bool) -> None:
    """``RUNS`` runs of ``queued_job`` cancelled while their ``fx_queued`` call waits on the spare pool's
    queue (their coordinators SIGKILLed first when ``kill``); then the pool's worker starts."""
    since = time.time()
    pids = submit(fleet, "queued_job", RUNS)
    queued = wait_until(lambda: fleet.queue_length(POOL) >= RUNS, 60)
    if not queued:
        row.problems.append(f"{fleet.queue_length(POOL)} of {RUNS} calls reached the {POOL} queue within 60 s")
    before = journals(fleet.cli_json, pids)  # each run's ticket, journaled before the queued call
    if kill and not kill_coordinator(fleet, (), wait_until(lambda: owners(fleet, pids), 20) or {}):
        row.problems.append("the coordinators driving the runs could not be killed: fault not injected")
    with ThreadPoolExecutor(RUNS) as pool:
        told = list(pool.map(lambda pid: fleet.cli("cancel", pid, "--as", "faults"), pids))
    for pid, done in zip(pids, told, strict=True):
        if "cancel requested" not in done.stdout:
            row.problems.append(f"castor cancel {pid} exited {done.returncode}: {(done.stdout + done.stderr)[-200:]}")
    outcome = settle(fleet, pids, 4 * fleet.timing.lease + 30)

    mark = fleet.start_spare(POOL)  # takes what was left on the queue: every task of a cancelled run
    try:
        drained = wait_until(lambda: fleet.queue_length(POOL) == 0 and
                             fleet.log(POOL)[mark:].count(" dropped: ") >= RUNS, 30)
        if not drained and queued:
            row.problems.append(f"the {POOL} worker dropped {fleet.log(POOL)[mark:].count(' dropped: ')} of "
                                f"{RUNS} tasks left on its queue ({fleet.queue_length(POOL)} still there)")
    finally:
        fleet.retire(POOL)
    after = verdict(fleet, row, since, pids, snapshot(before), outcome)
    starts, _ = read_records(fleet.records)
    for ticket in tickets_of(after):
        if starts[(ticket, 1, TOOL)]:
            row.once_max = max(row.once_max, starts[(ticket, 1, TOOL)])
            row.problems.append(f"run {ticket}'s queued call ran after its run was cancelled")
    for pid in pids:
        data = after.get(pid) or {}
        if data.get("status") != "PREEMPTED" or data.get("preemption_reason") != "cancelled":
            row.problems.append(f"run {pid} is {data.get('status')} ({data.get('preemption_reason')}), not cancelled")
        elif len(data.get("syscall_log") or []) != 1:
            row.problems.append(f"run {pid} journaled {len(data.get('syscall_log') or [])} steps, not its ticket alone")
