"""Crash and race faults: a worker or a coordinator SIGKILLed mid-tool, Redis restarted mid-tool (clean
``SHUTDOWN`` or SIGKILL, on the same AOF), a run whose agent kills its coordinator, and two ``castor``
processes deciding one run at once."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench._faults_agents import POOLS
from bench._faults_fleet import CASTOR, PREFIX, ROOT, FaultFleet, spec
from bench._faults_observe import Plan, Row, busy, journals, judge, running, settle, snapshot, tickets_of, wait_until
from castor.backends.redis import keys
from castor.fleet.client import owner_of

TOOLS = [a for names in POOLS.values() for n in names for a in ("--tool", spec(n))]
Inject = Callable[[FaultFleet, tuple[str, int, int], dict[str, str]], bool]  # False: not injected


def submit(fleet: FaultFleet, agent: str, n: int) -> list[str]:
    """Submit ``n`` runs of ``agent`` with ``castor submit``; their pids."""
    with ThreadPoolExecutor(n) as pool:
        done = list(pool.map(lambda _: fleet.cli("submit", spec(agent), *TOOLS, "--budget", "api=100"), range(n)))
    for d in done:
        if d.returncode != 0:
            raise RuntimeError(f"castor submit failed: {d.stderr.strip()[-500:]}")
    return [d.stdout.strip() for d in done]


def owners(fleet: FaultFleet, pids: list[str]) -> dict[str, str]:
    """The coordinator driving each run (its owner in ``castor ps``: the name in its lease), once every run
    has one; else {}. Read from Redis, not with ``castor ps``: on a loaded machine an interpreter's start
    outlasts the short calls a trial must catch running once it knows the owners."""
    tokens = fleet.redis.mget([keys.lease(PREFIX, pid) for pid in pids])
    rows = {pid: owner_of(token) or "" for pid, token in zip(pids, tokens, strict=True)}
    return rows if all(rows.values()) else {}


def trial(fleet: FaultFleet, row: Row, agent: str, tool: str, inject: Inject, settle_for: float,
          injected: Callable[[], None] = lambda: None) -> None:
    """Two runs of ``agent``; once a call of ``tool`` is running, snapshot the journals and inject the
    fault (then call ``injected``); then let the runs end and judge them. A coordinator is killed before
    the snapshot, which takes longer than a short call: its death changes nothing in Redis, so the
    journals read after it are those it left. Trials at once must watch different tools."""
    since = time.time()
    try:
        pids = submit(fleet, agent, 2)
        first = inject is not kill_coordinator
        driving = {} if first else wait_until(lambda: owners(fleet, pids), 20) or {}
        found = wait_until(lambda: running(fleet.records, tool, since), 60)
        if found is None:
            row.problems.append(f"no call of {tool} started within 60 s: fault not injected")
        before = journals(fleet.cli_json, pids) if first else {}
        if found is not None and not inject(fleet, found, {p: driving.get(p, "") for p in pids}):
            row.problems.append(f"the fault could not be injected (call of {tool} at {found[0]}:{found[1]})")
    finally:
        injected()
    before = before if first else journals(fleet.cli_json, pids)
    outcome = settle(fleet, pids, settle_for)
    verdict(fleet, row, since, pids, snapshot(before), outcome)


def verdict(fleet: FaultFleet, row: Row, since: float, pids: list[str], before: dict[str, list[Any]],
            outcome: dict[str, str], extra: frozenset[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """Judge a trial's runs once they ended; returns their journals. A call of theirs still running (one a
    human was asked about, say) finishes first, or is lost."""
    after = journals(fleet.cli_json, pids)
    mine = tickets_of(after) | extra
    wait_until(lambda: not busy(fleet.records, since, mine), fleet.timing.long + 10)
    judge(row, fleet.records, before, after, outcome, fleet.exits_since(since), extra)
    return after


def kill_worker(fleet: FaultFleet, found: tuple[str, int, int], _: dict[str, str]) -> bool:
    """SIGKILL the worker process that runs the call."""
    name = fleet.name_of(found[2])
    if name is not None:
        fleet.kill(name)
    return name is not None


def kill_coordinator(fleet: FaultFleet, _: tuple[str, int, int], driving: dict[str, str]) -> bool:
    """SIGKILL the coordinators driving the trial's runs (which run the call is of takes a journal read
    longer than a short call to learn, so both die if the two runs have different owners)."""
    names = [n for n in ("co-1", "co-2") if any(o.startswith(n) for o in driving.values())]
    for name in names:
        if fleet.pid_of(name) is not None:
            fleet.kill(name)
    return bool(names)


def restart_redis(clean: bool) -> Inject:
    """Stop Redis (``SHUTDOWN`` or SIGKILL), keep it down for the outage, start it on the same AOF."""

    def inject(fleet: FaultFleet, _: tuple[str, int, int], __: dict[str, str]) -> bool:
        fleet.stop_redis(clean)
        time.sleep(fleet.timing.outage)
        fleet.start_redis()
        return True

    return inject


def crash_rows(fleet: FaultFleet, plan: Plan, chosen: Callable[[str], bool]) -> list[Row]:
    """Every crash fault of a chosen family, ``plan.trials`` times each (a fault with two targets alternates)."""
    settle_for = 4 * fleet.timing.long + 40
    once, idem = ("long_job", "fx_once"), ("long_idem_job", "fx_idem")
    plans: list[tuple[str, str, list[tuple[str, str]], Inject]] = [
        ("coordinator", "coordinator SIGKILL, short tool", [("short_job", "fx_once")], kill_coordinator),
        ("coordinator", "coordinator SIGKILL, long tool", [once], kill_coordinator),
        ("redis", "Redis SHUTDOWN+restart mid-tool", [once, idem], restart_redis(True)),
        ("redis", "Redis SIGKILL+restart mid-tool", [once, idem], restart_redis(False)),
    ]
    # With ``plan.distinct`` (quick mode) each row runs once, on its first target, but the SIGKILL restart on
    # its second: each kind of restart and each kind of call still meets the fault.
    first = {"Redis SIGKILL+restart mid-tool": 1} if plan.distinct else {}
    rows = []
    for family, fault, targets, inject in plans:
        if not chosen(family):
            continue
        row, started = Row(fault), time.monotonic()
        for i in plan.rounds(row, kinds=1):
            agent, tool = targets[(first.get(fault, 0) + i) % len(targets)]
            trial(fleet, row, agent, tool, inject, settle_for)
        row.seconds = time.monotonic() - started
        rows.append(row)
    return rows


def poison_rows(fleet: FaultFleet, plan: Plan, chosen: Callable[[str], bool]) -> list[Row]:
    """A run whose agent kills the coordinator driving it, on every resume: it must be quarantined
    (FAILED with the reason) instead of sending coordinators into an endless crash loop. Two trials at
    once (two runs: each death counts for both, so the limit is per run)."""
    if not chosen("poison"):
        return []
    row, started = Row("poison run (its agent kills its coordinator)"), time.monotonic()
    for wave in plan.waves(row, 2):
        since = time.time()
        pids = submit(fleet, "poison_job", len(wave))
        outcome = settle(fleet, pids, 10 * fleet.timing.lease + 30)
        for pid in pids:
            if outcome.get(pid) != "FAILED":
                row.problems.append(f"poison run {pid} was not quarantined: {outcome.get(pid)}")
                fleet.cli("cancel", pid)  # or it goes on killing coordinators through the next faults
        deaths = sum(e.name.startswith("co-") and not e.planned for e in fleet.exits_since(since))
        row.problems += [f"{deaths} coordinator deaths for {len(pids)} runs"] if deaths > 10 * len(pids) else []
        after = journals(fleet.cli_json, pids)
        for pid in pids:  # one trial per run
            judge(row, fleet.records, {}, {pid: after.get(pid) or {}}, {pid: outcome.get(pid, "UNKNOWN")},
                  fleet.exits_since(since))
    row.seconds = time.monotonic() - started
    return [row]


def race_rows(fleet: FaultFleet, plan: Plan, chosen: Callable[[str], bool]) -> list[Row]:
    """``castor approve`` and ``castor resume`` of one suspended run at the same time, on a SQLite file
    and on Redis (runs of the CLI, not of the fleet: the deciding processes execute the call). The two
    stores' rows run at once; they touch no process of the fleet."""
    if not chosen("approve"):
        return []

    def race_row(store: str, agent: str, name: str) -> Row:
        row, started = Row(name), time.monotonic()
        for i in plan.rounds(row, kinds=1):
            race(fleet, row, store, i, agent)
        row.seconds = time.monotonic() - started
        return row

    kinds = [("sqlite", "approval_job", "approve+resume at once (sqlite)"),
             ("redis", "approval_job", "approve+resume at once (redis)"),
             # The run went past a call whose error the agent caught: what ran before the approval must
             # not run again after it (the failed step is journaled; it once left a hole there).
             ("sqlite", "caught_job", "approve+resume after a caught error (sqlite)"),
             ("redis", "caught_job", "approve+resume after a caught error (redis)"),
             # A call that finished beside the one waiting for a human: kept with the run, not run again.
             ("sqlite", "beside_job", "approve+resume with a call beside it (sqlite)"),
             ("redis", "beside_job", "approve+resume with a call beside it (redis)")]
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda kind: race_row(*kind), kinds))


def race(fleet: FaultFleet, row: Row, store: str, i: int, agent: str = "approval_job") -> None:
    """One run of ``agent`` suspended on its destructive call, then approved and resumed by two processes at
    once."""
    since = time.time()
    env = dict(fleet.env)
    for var in ("CASTOR_CONFIG", "CASTOR_REDIS_URL", "CASTOR_REDIS_PREFIX"):
        env.pop(var, None)
    if store == "redis":  # the prefix in the URL: `castor run` does not read CASTOR_REDIS_PREFIX
        env["CASTOR_REDIS_URL"] = f"{fleet.url}?prefix=faults-race"
    where = [] if store == "redis" else ["--db", str(fleet.tmp / f"race-{agent}-{i}.db")]
    pid = f"race-{store}-{agent.split('_')[0]}-{i}-{int(since * 1000) % 10**8}"
    fleet.cli("run", spec(agent), *TOOLS, "--pid", pid, *where, env=env)
    procs = {cmd: subprocess.Popen([*CASTOR, cmd, pid, *where], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True) for cmd in ("approve", "resume")}
    for cmd, proc in procs.items():
        try:
            out = proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            out = proc.communicate(timeout=10)[0]
        if proc.returncode != 0:
            row.notes.append(f"castor {cmd} {pid} exited {proc.returncode}: {' '.join(out.split())[-200:]}")

    after = journals(lambda *args: _json(fleet, env, *args, *where), [pid])
    status = str((after.get(pid) or {}).get("status") or "UNKNOWN")
    outcome = {pid: status}
    if status != "COMPLETED":
        row.problems.append(f"run {pid} ended {status} ({(after.get(pid) or {}).get('error')}), not COMPLETED")
    judge(row, fleet.records, {}, after, outcome, fleet.exits_since(since))


def _json(fleet: FaultFleet, env: dict[str, str], *args: str) -> Any:
    import json

    done = fleet.cli(*args, "--json", env=env)
    try:
        return json.loads(done.stdout) if done.returncode == 0 else None
    except json.JSONDecodeError:
        return None
