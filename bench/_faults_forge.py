"""Forged and malformed broker messages, crafted as kombu's Redis transport stores them: a JSON envelope
(headers, properties, base64 body) ``LPUSH``ed on the queue's list. A forged task copies a genuine one
taken from the transport's ``unacked`` hash while its tool runs, so only what the fault names differs."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import re
import subprocess
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from bench._faults_crash import submit, verdict
from bench._faults_fleet import CASTOR, PREFIX, QUEUES, ROOT, FaultFleet, terminate
from bench._faults_observe import Plan, Row, journals, read_records, settle, snapshot, wait_until

SAMPLE_SECRET = "change-me"
REFUSAL_WAIT = 30.0  # s for a worker to dead-letter a forged message (its pool may be busy)
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class Forger:
    """Captures a genuine task of pool ``fb`` and writes forged ones next to it."""

    def __init__(self, fleet: FaultFleet) -> None:
        self.fleet = fleet
        self.envelope: dict[str, Any] = {}
        self.kwargs: dict[str, Any] = {}
        self.queue = ""
        self.sent: list[str] = []  # the task ids of the messages forged

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
                    and body[1].get("run_id") == pid and body[1].get("tool_name") == "fx_once":
                self.envelope, self.kwargs, self.queue = payload, body[1], f"{QUEUES}:{routing_key}"
                return True
        return False

    def message(self, body: Any, task: str | None = None, **more: Any) -> str:
        """The captured envelope with a new task id and delivery tag, a fresh expiry and ``body`` (``more``:
        headers to set)."""
        msg = copy.deepcopy(self.envelope)
        task_id = str(uuid.uuid4())
        headers, props = msg["headers"], msg["properties"]
        headers.update(id=task_id, root_id=task_id, **more)
        headers["expires"] = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
        if task:
            headers["task"] = task
        props.update(correlation_id=task_id, delivery_tag=str(uuid.uuid4()))
        text = body if isinstance(body, str) else json.dumps(body)
        msg["body"] = base64.b64encode(text.encode()).decode()
        return json.dumps(msg)

    def push(self, body: Any, task: str | None = None, queue: str | None = None, **headers: Any) -> str:
        """``LPUSH`` a forged message on the pool's queue list (or ``queue``); its task id."""
        text = self.message(body, task, **headers)
        self.fleet.redis.lpush(queue or self.queue, text)
        task_id = str(json.loads(text)["headers"]["id"])
        self.sent.append(task_id)
        return task_id

    def refused(self, row: Row, ids: list[str], also: Callable[[], bool] = lambda: False) -> list[dict[str, Any]]:
        """Wait until ``castor deadletters --pool fb`` lists the messages ``ids`` (or ``also()`` is true):
        their letters. A message a worker did not dead-letter within the wait is a problem of ``row``."""
        letters: dict[str, dict[str, Any]] = {}
        looked = [time.monotonic()]  # each look reads the list anew (a read other trials share, if newer)

        def listed() -> bool:
            found = self.fleet.shared_json("deadletters", "--pool", "fb", "--limit", "100000", after=looked[0]) or {}
            looked[0] = time.monotonic()
            for letter in found.get("letters") or []:
                task_id = (letter.get("headers") or {}).get("id") if isinstance(letter.get("headers"), dict) else None
                if task_id in ids:
                    letters[task_id] = letter
            return len(letters) == len(ids) or also()

        if not wait_until(listed, REFUSAL_WAIT, every=0.3) and not also():
            row.problems.append(f"{len(ids) - len(letters)} of {len(ids)} forged messages not dead-lettered "
                                f"within {REFUSAL_WAIT:g} s")
        return [letters[i] for i in ids if i in letters]


def forged_task(forger: Forger, **changes: Any) -> list[Any]:
    """A task body: the captured kwargs, changed."""
    return [[], {**forger.kwargs, **changes}, EMBED]


def signed(kwargs: dict[str, Any], secret: str) -> str:
    """A token as a coordinator signs one (HMAC-SHA256 over the canonical JSON of every other field)."""
    part = {name: value for name, value in kwargs.items() if name != "token"}
    text = json.dumps(part, sort_keys=True, separators=(",", ":"))
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def hijack(forger: Forger, row: Row, pid: str) -> frozenset[str]:
    """An unsigned copy of the live run's running task (same run, step, attempt, reply stream)."""
    forger.refused(row, [forger.push(forged_task(forger, token=None))])
    return frozenset()


def reply_key(forger: Forger, row: Row, pid: str) -> frozenset[str]:
    """Unsigned tasks whose reply stream names an existing string key, and a key that does not exist."""
    victim, fresh = f"faults-victim-{uuid.uuid4().hex[:8]}", f"{PREFIX}:replies:{{forged-{uuid.uuid4().hex[:8]}}}"
    forger.fleet.redis.set(victim, "canary")
    run = f"forged-{uuid.uuid4().hex[:8]}"
    forger.refused(row, [forger.push(forged_task(forger, run_id=run, step=2, token=None, reply_to=key))
                         for key in (victim, fresh)])
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
    sent = forger.push(forged_task(forger, step=99, arguments=big, checked=big, token=None))
    for entry in forger.refused(row, [sent]):
        if len(json.dumps(entry)) > 10_000 or int(entry.get("size") or 0) < 10_000_000:
            row.problems.append(f"the dead letter of a 10 MB task holds {len(json.dumps(entry))} bytes and says it "
                                f"had {entry.get('size')}")
    grown = max(len(forger.fleet.log(name)) - n for name, n in logs.items())
    if grown > 1_000_000:
        row.problems.append(f"a worker logged {grown // 1_000_000} MB for one oversized task")
    held = sum(forger.fleet.redis.memory_usage(k) or 0 for k in forger.fleet.redis.scan_iter(f"{PREFIX}:{{{pid}}}*"))
    if held > 1_000_000:
        row.problems.append(f"run {pid} holds {held // 1_000_000} MB in Redis after one oversized task")
    return frozenset()


def poison(forger: Forger, row: Row, pid: str) -> frozenset[str]:
    """Bodies that are valid JSON but not Celery's ``[args, kwargs, embed]``, for the tool's task and for one
    of Celery's own tasks (which a Castor worker does not serve: they ran under Celery's default strategy)."""
    bodies: list[Any] = ['"just a string"', [1, 2], {}]
    ids = [forger.push(body) for body in bodies] + [forger.push(bodies[0], task="celery.chord_unlock")]
    letters = forger.refused(row, ids)
    row.notes += [f"dead-lettered: {entry.get('reason')}" for entry in letters]
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
            arguments = {"run": ticket, "step": 1, "kind": "short"}
            kwargs = {**forger.kwargs, "run_id": ticket, "step": 1, "tool_name": tool, "attempt": 0,
                      "arguments": arguments, "checked": arguments, "reply_to": ""}
            kwargs["token"] = signed(kwargs, secret) if secret else None
            queue = f"{queues}:{queues}.fb"
            sent = forger.push([[], kwargs, EMBED], task=f"castor.tool.{tool}", queue=queue)
            forger.refused(row, [sent], also=partial(ran, fleet.records, (ticket, 1, tool)))
            if read_records(fleet.records)[0][(ticket, 1, tool)]:
                row.problems.append(f"a worker with {what} ran {tool} from a forged task")
        finally:
            terminate(proc, 15)
    return frozenset(tickets)


def run_later(forger: Forger, row: Row, pid: str) -> frozenset[str]:
    """Copies of the live run's task asking to run later (an ``eta``, which Celery holds in the worker's
    memory unchecked until then): 20 unsigned ones due in half a minute, one whose token holds characters
    other than ASCII (checking it raised out of the worker's consumer: the worker exited 0), and the genuine
    signed one due in an hour. Each must be dead-lettered at once, not held."""
    soon = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    ids = [forger.push(forged_task(forger, token=None), eta=soon, retries=1) for _ in range(20)]
    ids.append(forger.push(forged_task(forger, token="é" * 64), eta=soon, retries=1))
    far = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    ids.append(forger.push(forged_task(forger), eta=far, retries=1))
    letters = forger.refused(row, ids)
    row.notes += sorted({f"dead-lettered: {kind(str(entry.get('reason')))}" for entry in letters})
    return frozenset()


def replies(forger: Forger, row: Row, pid: str) -> frozenset[str]:
    """Entries of any shape on the reply stream the live call's coordinator reads (the stream its task names),
    each for that call: unsigned, a signature of characters other than ASCII (comparing it raised and stopped
    the coordinator's reader: its calls then waited for their deadlines), a result nested past Python's
    recursion limit, fields that are no reply. None may answer the call or stop the reader: the run
    completes, its call made once."""
    kwargs, task_id = forger.kwargs, str(forger.envelope["headers"]["id"])
    call = {"e": f"{pid}:{kwargs['step']}", "a": str(kwargs["attempt"]), "i": task_id}
    entries = [
        {**call, "s": "refused", "t": "TaskRefusedError", "m": "forged", "j": "1"},
        {**call, "s": "refused", "t": "TaskRefusedError", "m": "forged", "h": "é" * 64},
        {**call, "s": "ok", "r": "[" * 100_000, "h": "0" * 64},
        {"not": "a reply"},
    ]
    for entry in entries:
        forger.fleet.redis.xadd(str(kwargs["reply_to"]), entry)
    return frozenset()


def time_limits(forger: Forger, row: Row, pid: str) -> frozenset[str]:
    """Copies of the live run's signed task asking for time limits of their own (Celery's ``timelimit``
    header, which a worker applies over the task's, and which the token does not sign): one short enough to
    kill the tool mid-call, one an hour long (past the deadline the pool promises to kill it at). Each must
    be dead-lettered unrun."""
    ids = [forger.push(forged_task(forger), timelimit=limits) for limits in ([0.3, 0.2], [3600, 3600])]
    letters = forger.refused(row, ids)
    row.notes += sorted({f"dead-lettered: {kind(str(entry.get('reason')))}" for entry in letters})
    return frozenset()


def unearned_retries(forger: Forger, row: Row, pid: str) -> frozenset[str]:
    """Copies of the live run's signed task numbered as retries its call never had (Celery's ``retries``
    header, which the token does not sign): claiming the call's retries spent, such a copy taken first made
    a retryable tool's transient failure final. Workers count a call's retries in Redis: each must be
    dead-lettered unrun."""
    ids = [forger.push(forged_task(forger), retries=count) for count in (1, 30)]
    letters = forger.refused(row, ids)
    row.notes += sorted({f"dead-lettered: {kind(str(entry.get('reason')))}" for entry in letters})
    return frozenset()


def renamed(forger: Forger, row: Row, pid: str) -> frozenset[str]:
    """A copy of the live run's signed task renamed for the logs (Celery's ``shadow`` header, which names the
    task in the worker's log and its events, so Flower, and which the token does not sign): it must be
    dead-lettered unrun."""
    letters = forger.refused(row, [forger.push(forged_task(forger), shadow="castor.tool.fx_idem")])
    row.notes += sorted({f"dead-lettered: {kind(str(entry.get('reason')))}" for entry in letters})
    return frozenset()


# The last: JSON nested past Python's recursion limit (decoding it raised RecursionError in the consumer).
NOT_ENVELOPES = ["not json at all", "[1, 2]", '{"properties": {"delivery_tag": "t"}, "headers": "not an object"}',
                 "[" * 100_000]


def broken_envelopes(forger: Forger, row: Row, pid: str) -> frozenset[str]:
    """Items on the pool's queue list that are no kombu envelope (kombu decoded them in the consumer, and
    the worker stopped at the first), and a task whose zlib body inflates to 64 MB (kombu inflated it
    before any check). Each must be dead-lettered, the bomb without being inflated."""
    started = time.time()
    for item in NOT_ENVELOPES:
        forger.fleet.redis.lpush(forger.queue, item)
    text = forger.message(forged_task(forger, token=None, padding=" " * 64_000_000), compression="application/x-gzip")
    msg = json.loads(text)
    msg["body"] = base64.b64encode(zlib.compress(base64.b64decode(msg["body"]))).decode()
    forger.fleet.redis.lpush(forger.queue, json.dumps(msg))
    bomb = str(msg["headers"]["id"])
    forger.sent.append(bomb)
    letters = forger.refused(row, [bomb])
    if letters and letters[0].get("size", 0) > 1_000_000:
        row.problems.append(f"the zlib bomb was inflated to {letters[0]['size']} bytes before it was refused")

    def envelopes() -> bool:
        found = forger.fleet.shared_json("deadletters", "--pool", "fb", "--limit", "100000", after=time.monotonic())
        return sum(1 for d in (found or {}).get("letters") or []
                   if str(d.get("reason", "")).startswith("the broker envelope") and d.get("at", 0) >= started) \
            >= len(NOT_ENVELOPES)

    if not wait_until(envelopes, REFUSAL_WAIT, every=0.3):
        row.problems.append(f"the {len(NOT_ENVELOPES)} items that are no envelope were not all dead-lettered")
    return frozenset()


CONTROL_ORDERS: list[tuple[str, dict[str, Any]]] = [
    ("shutdown", {}), ("pool_restart", {"reload": True}), ("pool_shrink", {"n": 1}),
    ("autoscale", {"max": 1, "min": 0}),
    ("rate_limit", {"task_name": "castor.tool.fx_once", "rate_limit": "1/h"}), ("disable_events", {}),
    ("hello", {"from_node": "forger@nowhere", "revoked": {"whatever": 1}}),
]


def control_orders(forger: Forger, row: Row, pid: str) -> frozenset[str]:
    """Celery remote control orders on the broker's pidbox, unsigned: one addressed by a catastrophic
    regular expression, ``revoke(terminate=True)`` of the live run's running task, ``cancel_consumer`` of
    every pool's queue, ``shutdown`` and the rest. Every worker must refuse each; the run must complete
    with its call made once, and no worker may exit."""
    from celery import Celery

    from castor.fleet.celery_config import celery_config
    from castor.settings import load_settings

    settings = load_settings(forger.fleet.config, env={})
    app = Celery("forger", set_as_current=False)
    app.conf.update(celery_config(settings))
    control, asked = app.control, {"reply": True, "timeout": 1.0}
    try:
        # Recipients named by a pattern kombu matched as a regular expression in the consumer: it hung there.
        control.broadcast("ping", pattern=r"((.*)*)*((.*)*)*X", matcher="pcre")
        replies = [control.revoke(forger.envelope["headers"]["id"], terminate=True, signal="SIGKILL", **asked)]
        replies += [control.cancel_consumer(settings.queue_of(pool), **asked) for pool in settings.pools]
        replies += [control.broadcast(name, arguments=args, **asked) for name, args in CONTROL_ORDERS]
    finally:
        app.close()
    obeyed = [answer for reply in replies for answer in reply if "refused" not in str(answer)]
    if not any(replies):
        row.problems.append("no worker answered a remote control order")
    elif obeyed:
        row.problems.append(f"{len(obeyed)} remote control orders obeyed, e.g. {str(obeyed[0])[:120]}")
    else:
        row.notes.append(f"{sum(len(reply) for reply in replies)} answers from the workers, each a refusal")
    return frozenset()


def ran(records: Path, call: tuple[str, int, str]) -> bool:
    """Whether the records show a start of ``call`` (ticket, step, tool)."""
    return bool(read_records(records)[0][call])


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
    ("forged: remote control orders (shutdown, revoke, cancel_consumer)", control_orders),
    ("forged: tasks asking to run later (eta)", run_later),
    ("forged: replies of any shape on a coordinator's reply stream", replies),
    ("forged: signed tasks asking for time limits of their own", time_limits),
    ("forged: signed tasks numbered as retries their call never had", unearned_retries),
    ("forged: a signed task renamed for the logs (shadow)", renamed),
    ("forged: queue items that are no envelope, a zlib bomb", broken_envelopes),
    ("forged: bodies not [args, kwargs, embed]", poison),  # last: on a broken worker it kills the pool
]


def forge_rows(fleet: FaultFleet, plan: Plan, chosen: Callable[[str], bool], sent: list[str]) -> list[Row]:
    """Every forged-message fault, ``plan.trials`` times each; each trial has a live run the forgery targets.
    The kinds run at once (each its own runs and row), their trials one after the other. The task ids of
    the messages forged are added to ``sent``."""
    if not chosen("forged"):
        return []
    with ThreadPoolExecutor(len(ATTACKS)) as pool:
        return list(pool.map(lambda a: forge_row(fleet, plan, a[0], a[1], sent), ATTACKS))


def forge_row(fleet: FaultFleet, plan: Plan, fault: str, attack: Attack, sent: list[str]) -> Row:
    """One forged-message fault's row."""
    row, started = Row(fault), time.monotonic()
    for _ in plan.rounds(row, kinds=1):
        since, forger = time.time(), Forger(fleet)
        pid = forger.live_run()
        if pid is None:
            row.problems.append("no genuine task to copy: the forgery was not sent")
            continue
        before = journals(fleet.cli_json, [pid])
        extra = attack(forger, row, pid)
        sent += forger.sent
        outcome = settle(fleet, [pid], 4 * fleet.timing.long + 30)
        after = verdict(fleet, row, since, [pid], snapshot(before), outcome, extra)
        if outcome.get(pid) != "COMPLETED":
            error = (after.get(pid) or {}).get("error")
            row.problems.append(f"the targeted run {pid} ended {outcome.get(pid)} ({error}), not COMPLETED")
    row.seconds = time.monotonic() - started
    return row


def deadletter_rows(fleet: FaultFleet, chosen: Callable[[str], bool], sent: list[str]) -> list[Row]:
    """After the forgeries: ``castor deadletters --json`` lists every message forged (``sent``) and no
    genuine one, counted by kind (its reason); ``castor deadletters purge --pool fb`` empties the list."""
    if not chosen("forged"):
        return []
    row, started = Row("dead letters: listed, then purged"), time.monotonic()
    listing = fleet.cli_json("deadletters", "--limit", "100000") or {}
    letters = listing.get("letters") or []
    ids = [(d.get("headers") or {}).get("id") if isinstance(d.get("headers"), dict) else None for d in letters]
    missing = set(sent) - set(ids)
    if not letters or missing:
        row.problems.append(f"{len(missing)} of {len(sent)} forged messages missing from castor deadletters")
    # A letter without a task id: a queue item that was no message at all (broken_envelopes forged those).
    if other := [i for i in ids if i is not None and i not in set(sent)]:
        row.problems.append(f"{len(other)} messages the harness did not forge were dead-lettered")
    if listing.get("counts", {}).get("fb") != len([d for d in letters if d.get("pool") == "fb"]):
        row.problems.append(f"castor deadletters counts {listing.get('counts')}, lists {len(letters)}")
    kinds = Counter(kind(str(d.get("reason"))) for d in letters)
    row.notes += [f"{n} x {kind}" for kind, n in sorted(kinds.items())]
    purged = fleet.cli("deadletters", "purge", "--pool", "fb")
    if purged.returncode != 0 or f"purged {len([d for d in letters if d.get('pool') == 'fb'])} " not in purged.stdout:
        row.problems.append(f"castor deadletters purge --pool fb: {(purged.stdout + purged.stderr).strip()[-200:]}")
    left = fleet.cli_json("deadletters", "--pool", "fb")
    if left is None or left.get("letters") or any(left.get("counts", {}).values()):
        row.problems.append(f"after a purge, castor deadletters --pool fb still lists {left}")
    row.trials = 1
    row.seconds = time.monotonic() - started
    return [row]


def kind(reason: str) -> str:
    """A dead letter's reason without what differs from one message to the next (names, numbers)."""
    text = re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'...'", reason.split(" (run ")[0]))
    return text if len(text) <= 100 else f"{text[:99]}…"  # cut visibly, not mid-parenthesis unannounced


def clean_queues(fleet: FaultFleet) -> None:
    """Drop what the forgeries left on the broker (a poison pill restored to its queue)."""
    for key in fleet.redis.scan_iter(f"{QUEUES}*"):
        if fleet.redis.type(key) == "list":
            fleet.redis.delete(key)
    fleet.redis.delete(f"{QUEUES}:unacked", f"{QUEUES}:unacked_index")


