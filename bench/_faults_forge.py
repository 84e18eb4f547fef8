"""Forged and malformed broker messages, crafted as kombu's Redis transport stores them: a JSON envelope
(headers, properties, base64 body) ``LPUSH``ed on the queue's list. A forged task copies a genuine one
taken from the transport's ``unacked`` hash while its tool runs, so only what the fault names differs."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench._faults_crash import submit
from bench._faults_fleet import CASTOR, PREFIX, QUEUES, ROOT, FaultFleet
from bench._faults_observe import Plan, Row, busy, journals, judge, read_records, settle, snapshot, wait_until

SAMPLE_SECRET = "change-me"
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class Forger:
    """Captures a genuine task of pool ``fb`` and writes forged ones next to it."""

    def __init__(self, fleet: FaultFleet) -> None:
        self.fleet = fleet
        self.envelope: dict[str, Any] = {}
        self.kwargs: dict[str, Any] = {}
        self.queue = ""

    def live_run(self) -> str | None:
        """Submit a run and wait until its long non-idempotent call runs; capture that call's task."""
        pid = submit(self.fleet, "long_job", 1)[0]
        return pid if wait_until(lambda: self._capture(pid), 60) else None

    def _capture(self, pid: str) -> bool:
        """Whether the transport's ``unacked`` hash holds ``pid``'s running ``fx_once`` task (now copied)."""
        for raw in self.fleet.redis.hvals(f"{QUEUES}:unacked"):
            payload, _, routing_key = json.loads(raw)
            body = json.loads(base64.b64decode(payload["body"]))
            if isinstance(body, list) and len(body) == 3 and isinstance(body[1], dict) \
                    and body[1].get("run_id") == pid and body[1].get("tool") == "fx_once":
                self.envelope, self.kwargs, self.queue = payload, body[1], f"{QUEUES}:{routing_key}"
                return True
        return False

    def message(self, body: Any, task: str | None = None) -> str:
        """The captured envelope with a new task id and delivery tag, a fresh expiry and ``body``."""
        msg = copy.deepcopy(self.envelope)
        task_id = str(uuid.uuid4())
        headers, props = msg["headers"], msg["properties"]
        headers.update(id=task_id, root_id=task_id)
        headers["expires"] = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
        if task:
            headers["task"] = task
        props.update(correlation_id=task_id, delivery_tag=str(uuid.uuid4()))
        text = body if isinstance(body, str) else json.dumps(body)
        msg["body"] = base64.b64encode(text.encode()).decode()
        return json.dumps(msg)

    def push(self, body: Any, task: str | None = None, queue: str | None = None) -> None:
        """``LPUSH`` a forged message on the pool's queue list (or ``queue``)."""
        self.fleet.redis.lpush(queue or self.queue, self.message(body, task))

    def drained(self, queue: str | None = None, extra: float = 1.5) -> None:
        """Wait until the queue's list is empty, then a little more for the worker to handle it."""
        wait_until(lambda: self.fleet.redis.llen(queue or self.queue) == 0, 20)
        time.sleep(extra)


def forged_task(forger: Forger, **changes: Any) -> list[Any]:
    """A task body: the captured kwargs, changed."""
    return [[], {**forger.kwargs, **changes}, EMBED]


def signed(kwargs: dict[str, Any], secret: str) -> str:
    """A token as a coordinator signs one (HMAC-SHA256 over the call's canonical JSON)."""
    part = [kwargs["run_id"], kwargs["step"], kwargs["tool"], kwargs["arguments"], kwargs["attempt"], kwargs["record"]]
    text = json.dumps(part, sort_keys=True, separators=(",", ":"))
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def hijack(forger: Forger, row: Row, pid: str) -> frozenset[str]:
    """An unsigned copy of the live run's running task (same run, step, attempt, reply stream)."""
    forger.push(forged_task(forger, token=None))
    forger.drained()
    return frozenset()


def reply_key(forger: Forger, row: Row, pid: str) -> frozenset[str]:
    """Unsigned tasks whose reply stream names an existing string key, and a key that does not exist."""
    victim, fresh = f"faults-victim-{uuid.uuid4().hex[:8]}", f"{PREFIX}:replies:{{forged-{uuid.uuid4().hex[:8]}}}"
    forger.fleet.redis.set(victim, "canary")
    run = f"forged-{uuid.uuid4().hex[:8]}"
    for key in (victim, fresh):
        forger.push(forged_task(forger, run_id=run, effect_id=f"{run}:2", token=None, reply_to=key))
    forger.drained()
    r = forger.fleet.redis
    kind = str(r.type(victim))
    if kind != "string" or r.get(victim) != "canary":
        row.problems.append(f"a forged task's reply_to turned key {victim} into a {kind}")
    if r.exists(fresh):
        row.problems.append(f"a forged task's reply_to created key {fresh}")
    r.delete(victim, fresh)
    return frozenset()


def oversized(forger: Forger, row: Row, pid: str) -> frozenset[str]:
    """An unsigned task naming the live run with a 10 MB argument: refused, stored and logged by size only."""
    logs = {name: len(forger.fleet.log(name)) for name in ("fa", "fb")}
    big = {"run": "x" * 10_000_000, "step": 99, "kind": "short"}
    forger.push(forged_task(forger, step=99, effect_id=f"{pid}:99", arguments=big, token=None))
    forger.drained(extra=3.0)
    grown = max(len(forger.fleet.log(name)) - n for name, n in logs.items())
    if grown > 1_000_000:
        row.problems.append(f"a worker logged {grown // 1_000_000} MB for one oversized task")
    held = sum(forger.fleet.redis.memory_usage(k) or 0 for k in forger.fleet.redis.scan_iter(f"{PREFIX}:{{{pid}}}*"))
    if held > 1_000_000:
        row.problems.append(f"run {pid} holds {held // 1_000_000} MB in Redis after one oversized task")
    return frozenset()


def poison(forger: Forger, row: Row, pid: str) -> frozenset[str]:
    """Bodies that are valid JSON but not Celery's ``[args, kwargs, embed]``."""
    bodies: list[Any] = ['"just a string"', [1, 2], {}]
    for body in bodies:
        forger.push(body)
    forger.drained(extra=3.0)
    return frozenset()


def sample_secret(forger: Forger, row: Row, pid: str) -> frozenset[str]:
    """A worker started with the sample secret (or none) on a queue of its own, sent a destructive call
    signed with ``change-me`` (or an unsigned plain call): it must not start, or must refuse them."""
    fleet, tickets = forger.fleet, set[str]()
    for secret, tool in ((SAMPLE_SECRET, "fx_remove"), (None, "fx_once")):
        queues = f"{QUEUES}-{'sample' if secret else 'nosecret'}"
        config = fleet.tmp / f"{queues}.toml"
        config.write_text(fleet.config.read_text().replace(f'queue_prefix = "{QUEUES}"', f'queue_prefix = "{queues}"'))
        env = {k: v for k, v in fleet.env.items() if k != "CASTOR_SECRET"}
        if secret:
            env["CASTOR_SECRET"] = secret
        log = fleet.tmp / f"{queues}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen([*CASTOR, "worker", "--config", str(config), "--pool", "fb", "--fast-start"],
                                    cwd=ROOT, env=env, stdout=out, stderr=out)
        try:
            if not _started(log, proc):
                continue  # refused to start: what is promised
            what = "the sample secret 'change-me'" if secret else "no secret"
            row.problems.append(f"a worker started with {what}")
            ticket = f"forged-{uuid.uuid4().hex[:8]}"
            tickets.add(ticket)
            kwargs = {**forger.kwargs, "run_id": ticket, "step": 1, "effect_id": f"{ticket}:1", "tool": tool,
                      "attempt": 0, "arguments": {"run": ticket, "step": 1, "kind": "short"}, "reply_to": ""}
            kwargs["token"] = signed(kwargs, secret) if secret else None
            queue = f"{queues}:{queues}.fb"
            forger.push([[], kwargs, EMBED], task=f"castor.tool.{tool}", queue=queue)
            forger.drained(queue)
            if read_records(fleet.records)[0][(ticket, 1, tool)]:
                row.problems.append(f"a worker with {what} ran {tool} from a forged task")
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    return frozenset(tickets)


def _started(log: Path, proc: subprocess.Popen[bytes]) -> bool:
    """Whether a worker came up (False: it exited, or never said it was ready)."""
    wait_until(lambda: " ready." in log.read_text() or proc.poll() is not None, 30)
    return proc.poll() is None and " ready." in log.read_text()


Attack = Callable[[Forger, Row, str], frozenset[str]]
ATTACKS: list[tuple[str, Attack]] = [
    ("forged: unsigned task naming a live run", hijack),
    ("forged: reply_to naming any Redis key", reply_key),
    ("forged: signed with the sample secret, or no secret", sample_secret),
    ("forged: 10 MB argument", oversized),
    ("forged: bodies not [args, kwargs, embed]", poison),  # last: on a broken worker it kills the pool
]


def forge_rows(fleet: FaultFleet, plan: Plan, chosen: Callable[[str], bool]) -> list[Row]:
    """Every forged-message fault, ``plan.trials`` times each; each trial has a live run the forgery targets."""
    forger, rows = Forger(fleet), []
    for fault, attack in ATTACKS if chosen("forged") else []:
        row, started = Row(fault), time.monotonic()
        for _ in plan.rounds(row):
            since = time.time()
            pid = forger.live_run()
            if pid is None:
                row.problems.append("no genuine task to copy: the forgery was not sent")
                continue
            before = journals(fleet.cli_json, [pid])
            extra = attack(forger, row, pid)
            outcome = settle(fleet.cli_json, fleet.cli, [pid], 4 * fleet.timing.long + 30)
            settled_calls(fleet, since)
            after = journals(fleet.cli_json, [pid])
            if outcome.get(pid) != "COMPLETED":
                error = (after.get(pid) or {}).get("error")
                row.problems.append(f"the targeted run {pid} ended {outcome.get(pid)} ({error}), not COMPLETED")
            judge(row, fleet.records, snapshot(before), after, outcome, fleet.exits_since(since), extra)
        row.seconds = time.monotonic() - started
        rows.append(row)
    clean_queues(fleet)
    return rows


def settled_calls(fleet: FaultFleet, since: float) -> None:
    """Wait for the calls started since ``since`` that still run (the real one a forgery shadowed)."""
    wait_until(lambda: not busy(fleet.records, since), fleet.timing.long + 10)


def clean_queues(fleet: FaultFleet) -> None:
    """Drop what the forgeries left on the broker (a poison pill restored to its queue)."""
    for key in fleet.redis.scan_iter(f"{QUEUES}*"):
        if fleet.redis.type(key) == "list":
            fleet.redis.delete(key)
    fleet.redis.delete(f"{QUEUES}:unacked", f"{QUEUES}:unacked_index")


