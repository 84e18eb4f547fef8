"""What the fault harness observes and how it judges a row: the tools' start/finish records, the runs'
state through ``castor ps`` / ``approvals`` / ``inspect --json``, and the verdict of each row."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._faults_agents import IDEMPOTENT, POOLS
from bench._faults_fleet import WORKERS, Exit, FaultFleet

ENDED = ("COMPLETED", "FAILED", "PREEMPTED")
RECORDED = tuple(name for names in POOLS.values() for name in names if name != "fx_ticket")  # tools that record
Cli = Callable[..., Any]  # FaultFleet.cli_json, or the same over another store


def read_records(path: Path) -> tuple[Counter[tuple[str, int, str]], Counter[tuple[str, int, str]]]:
    """Starts and finishes per (ticket, step, tool) in a records file."""
    starts: Counter[tuple[str, int, str]] = Counter()
    finishes: Counter[tuple[str, int, str]] = Counter()
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4:
            (starts if parts[0] == "start" else finishes)[(parts[1], int(parts[2]), parts[3])] += 1
    return starts, finishes


def finished_by(path: Path, call: tuple[str, int, str], killed: dict[int, str]) -> str:
    """Which processes finished ``call`` and when (those the harness killed named): what a row that finds a
    call completed twice shows, to tell a kill that landed just after the tool returned (its result lost
    with the process, the call run again) from a second run of a call that was journaled."""
    ticket, step, tool = call
    shown = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[0] == "finish" and (parts[1], parts[2], parts[3]) == (ticket, str(step), tool):
            who = f"pid {parts[4]}" + (f" ({killed[int(parts[4])]}, killed)" if int(parts[4]) in killed else "")
            shown.append(f"{who} at {parts[5]}")
    return "; ".join(shown)


def open_calls(path: Path, tool: str | None, since: float) -> list[tuple[str, int, int]]:
    """Calls of ``tool`` (None: any) that started after ``since`` (a ``time.time()``) and have not finished:
    (ticket, step, OS pid of the process running it). Calls of earlier trials are not counted."""
    found: dict[tuple[str, int], int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and tool in (None, parts[3]) and float(parts[5]) >= since:
            key = (parts[1], int(parts[2]))
            if parts[0] == "start":
                found[key] = int(parts[4])
            else:
                found.pop(key, None)
    return [(ticket, step, os_pid) for (ticket, step), os_pid in found.items()]


def running(path: Path, tool: str, since: float) -> tuple[str, int, int] | None:
    """A call of ``tool`` started after ``since`` that has not finished, if any."""
    calls = open_calls(path, tool, since)
    return calls[0] if calls else None


def busy(path: Path, since: float, tickets: set[str] | None = None) -> bool:
    """Whether a call started after ``since`` (of the runs with these ``tickets``; None: any run) is
    still running in a live process."""
    for ticket, _, os_pid in open_calls(path, None, since):
        if tickets is not None and ticket not in tickets:
            continue
        try:
            os.kill(os_pid, 0)
        except OSError:
            continue
        return True
    return False


def wait_until(check: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    """``check()``'s first truthy value within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    return None


def journals(cli_json: Cli, pids: list[str]) -> dict[str, dict[str, Any]]:
    """``castor inspect PID --json`` of every run, in parallel (a run that cannot be read is left out)."""
    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(lambda pid: cli_json("inspect", pid), pids))
    return {pid: data for pid, data in zip(pids, found, strict=True) if isinstance(data, dict)}


def settle(fleet: FaultFleet, pids: list[str], timeout: float) -> dict[str, str]:
    """Wait until every run ended or waits on a call in doubt; approve the ordinary approvals on the way
    (the human of a destructive call), never an in-doubt one. Returns each run's outcome: COMPLETED,
    FAILED, PREEMPTED, IN_DOUBT, or its status when time ran out."""
    outcome: dict[str, str] = {}
    approved: set[tuple[str, int]] = set()
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    while time.monotonic() < deadline:
        with ThreadPoolExecutor(2) as pool:  # both views at once, each read shared with trials polling too
            found = (pool.submit(fleet.shared_json, "ps", "--limit", "100000", after=last),
                     pool.submit(fleet.shared_json, "approvals", after=last))
        last = time.monotonic()  # the next look must be newer than this one (and any approval it sent)
        runs = {r["pid"]: r for r in found[0].result() or []}
        waiting = {a["pid"]: a for a in found[1].result() or []}
        for pid in pids:
            status = runs.get(pid, {}).get("status", "UNKNOWN")
            ask = waiting.get(pid)
            if status in ENDED:
                outcome[pid] = status
            elif ask is not None and "in doubt" in str(ask.get("reason") or ""):
                outcome[pid] = "IN_DOUBT"
            else:
                outcome[pid] = status
                if ask is not None and (pid, ask["step"]) not in approved:
                    approved.add((pid, ask["step"]))
                    fleet.cli("approve", pid, "--as", "faults")
        if all(o in (*ENDED, "IN_DOUBT") for o in outcome.values()) and len(outcome) == len(pids):
            return outcome
        time.sleep(0.3)
    return outcome


@dataclass
class Plan:
    """How many trials each fault gets: ``trials``, fewer when ``fail_fast`` (quick mode: a row that failed
    once fails, and waiting out its broken runs again would only cost time), when ``distinct`` (quick mode's
    default: a row gets only the trials that differ from each other, not repeats) or when the time budget
    that ends at ``deadline`` (a ``time.monotonic()``) is spent."""

    trials: int
    fail_fast: bool
    deadline: float
    distinct: bool = False

    def rounds(self, row: Row, kinds: int | None = None) -> Iterator[int]:
        """The trial numbers ``row`` gets; ``kinds``: how many different trials it has (None: every trial
        differs), the only ones it gets when ``distinct``."""
        for i in range(min(self.trials, kinds) if self.distinct and kinds else self.trials):
            if self.fail_fast and row.problems:
                return
            if time.monotonic() > self.deadline:
                row.problems.append(f"stopped after {row.trials} of {self.trials} trials: the time budget is spent")
                return
            yield i

    def waves(self, row: Row, size: int) -> Iterator[list[int]]:
        """The trial numbers ``row`` gets, ``size`` at a time: trials run at once, on different runs."""
        numbers = iter(self.rounds(row))
        while True:
            wave = [n for _, n in zip(range(size), numbers, strict=False)]
            if not wave:
                return
            yield wave


@dataclass
class Row:
    """One fault's line of the table."""

    fault: str
    trials: int = 0
    runs: int = 0
    once_max: int = 0  # most starts of one non-idempotent step
    idem: list[int] = field(default_factory=list)  # finishes of each completed idempotent step
    outcomes: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    dead: int = 0
    restarted: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how runs failed: allowed, but worth reading
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)  # trials at once

    @property
    def holds(self) -> bool:
        """Whether every promise held in every trial."""
        return not self.problems and self.trials > 0

    def as_dict(self) -> dict[str, Any]:
        """The row for ``--json``."""
        return {"fault": self.fault, "trials": self.trials, "runs": self.runs, "non_idempotent_max": self.once_max,
                "idempotent_min": min(self.idem, default=None), "idempotent_max": max(self.idem, default=None),
                "outcomes": dict(self.outcomes), "lost": self.lost, "workers_dead": self.dead,
                "workers_restarted": self.restarted, "holds": self.holds, "problems": counted(self.problems),
                "notes": counted(self.notes), "seconds": round(self.seconds, 1)}


def tool_of(record: dict[str, Any]) -> str:
    """The tool of a journal record as ``inspect --json`` shows it."""
    return str((record.get("request") or {}).get("tool_name") or record.get("tool_name") or "")


def tickets_of(after: dict[str, dict[str, Any]]) -> set[str]:
    """The runs' tickets (their first step's journaled result)."""
    logs = [d.get("syscall_log") or [] for d in after.values()]
    return {str(log[0]["response"]) for log in logs if log and isinstance(log[0].get("response"), str)}


def judge(row: Row, records: Path, before: dict[str, list[Any]], after: dict[str, dict[str, Any]],
          outcome: dict[str, str], exits: list[Exit], extra: frozenset[str] = frozenset()) -> None:
    """Add one trial's runs to ``row``: executions per step (of the trial's runs, and of the forged
    tickets ``extra``), outcomes, lost steps, dead workers."""
    with row.lock:
        _judge(row, records, before, after, outcome, exits, extra)


def _judge(row: Row, records: Path, before: dict[str, list[Any]], after: dict[str, dict[str, Any]],
           outcome: dict[str, str], exits: list[Exit], extra: frozenset[str]) -> None:
    mine = tickets_of(after) | extra
    starts, finishes = read_records(records)
    row.trials += 1
    row.runs += len(outcome)
    for pid, status in outcome.items():
        _judge_run(row, pid, status, after.get(pid) or {}, before.get(pid, []), finishes)
    for (ticket, step, tool), n in starts.items():
        if ticket not in mine:
            continue
        if tool in IDEMPOTENT:
            if finishes[(ticket, step, tool)] > 1:
                killed = {e.pid: e.name for e in exits if e.planned}
                row.problems.append(f"idempotent {tool} {ticket}:{step} completed {finishes[(ticket, step, tool)]}x: "
                                    f"{finished_by(records, (ticket, step, tool), killed)}")
            continue
        row.once_max = max(row.once_max, n)
        if n > 1:
            row.problems.append(f"non-idempotent {tool} {ticket}:{step} ran {n}x")
    for e in exits:
        if e.name in WORKERS and not e.planned:
            if e.code == 0:
                row.dead += 1
                row.problems.append(f"worker {e.name} exited 0 (dead: a supervisor would not restart it)")
            else:
                row.restarted += 1


def _judge_run(row: Row, pid: str, status: str, data: dict[str, Any], before: list[Any],
               finishes: Counter[tuple[str, int, str]]) -> None:
    error = str(data.get("error") or data.get("preemption_reason") or "")
    quarantined = status == "FAILED" and any(w in error.lower() for w in ("quarantin", "taken over"))
    cancelled = status == "PREEMPTED" and data.get("preemption_reason") == "cancelled"
    row.outcomes["quarantined" if quarantined else "cancelled" if cancelled else status] += 1
    if status not in (*ENDED, "IN_DOUBT"):
        row.problems.append(f"run {pid} did not end: {status}")
    elif status == "FAILED" and not error:
        row.problems.append(f"run {pid} FAILED without a reason")
    elif status in ("FAILED", "PREEMPTED") and not cancelled:
        row.notes.append(f"run {pid} {status}: {error[:160]}")
    log = data.get("syscall_log") or []
    ticket = str(log[0]["response"]) if log and isinstance(log[0].get("response"), str) else ""
    kept = [json.dumps([tool_of(r), r.get("response")], sort_keys=True) for r in log]
    lost = [i for i, rec in enumerate(before) if i >= len(kept) or kept[i] != rec]
    row.lost += len(lost)
    if lost:
        row.problems.append(f"run {pid}: journaled steps {lost} lost or changed")
    if status == "IN_DOUBT" and ticket:
        step = int(data.get("pending_step") or len(log))
        if any(finishes[(ticket, step, t)] for t in RECORDED):
            row.problems.append(f"run {pid}: a human is asked about step {step}, whose tool finished")
    for i, rec in enumerate(log):
        if ticket and tool_of(rec) in IDEMPOTENT and isinstance(rec.get("response"), str):
            n = finishes[(ticket, i, tool_of(rec))]
            row.idem.append(n)
            if n == 0:
                row.problems.append(f"run {pid}: idempotent step {i} journaled done, its tool never finished")


def snapshot(data: dict[str, dict[str, Any]]) -> dict[str, list[Any]]:
    """The journaled steps of each run, to compare after the fault."""
    return {pid: [json.dumps([tool_of(r), r.get("response")], sort_keys=True)
                  for r in d.get("syscall_log") or []] for pid, d in data.items()}


def counted(lines: list[str]) -> list[str]:
    """Each line once, in order, with how often it came when more than once."""
    seen = Counter(lines)
    return [line if seen[line] == 1 else f"{line} ({seen[line]}x)" for line in dict.fromkeys(lines)]


def table(rows: list[Row]) -> str:
    """The table the harness prints, and under it why each failing row fails."""
    head = ("fault", "trials", "non-idem max", "idem effects", "done/doubt/quar/cancel/failed", "lost",
            "workers dead", "holds", "time")
    cells = [head]
    for r in rows:
        low, high = min(r.idem, default=0), max(r.idem, default=0)
        idem = "-" if not r.idem else (f"{low}" if low == high else f"{low}-{high}")
        o = r.outcomes
        ended = f"{o['COMPLETED']}/{o['IN_DOUBT']}/{o['quarantined']}/{o['cancelled']}/{o['FAILED'] + o['PREEMPTED']}"
        left = r.runs - sum(o[k] for k in ("COMPLETED", "IN_DOUBT", "quarantined", "cancelled", "FAILED", "PREEMPTED"))
        ended += f" ({left} not ended)" if left else ""
        dead = f"{r.dead}" + (f" ({r.restarted} restarted)" if r.restarted else "")
        cells.append((r.fault, str(r.trials), str(r.once_max), idem, ended, str(r.lost), dead,
                      "yes" if r.holds else "NO", f"{r.seconds:.0f}s"))
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)).rstrip() for cell in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in rows:
        lines += [f"  {r.fault}: {problem}" for problem in counted(r.problems)]
        lines += [f"  {r.fault}: (note) {note}" for note in counted(r.notes)]
    return "\n".join(lines)
