"""The worker's claim on a step, against the real Redis in this process (no Celery worker needed): a
step the journal already holds is answered from its record and never executed again, whatever the
approval round; of several deliveries racing for an unjournaled step exactly one executes; a second copy
of a task message is dropped, while a redelivery of it is not a copy."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from castor.fleet.workers._guard import parse_job
from castor.fleet.workers._scripts import RUNNING, Delivery
from castor.fleet.workers._shown import ToolCallFailed
from castor.fleet.workers.runtime import DROPPED, WorkerRuntime

from castor.backends.redis import keys, redis_backend
from castor.checkpoint import new_record
from castor.fleet.wire import ERROR, IN_DOUBT, OK, REFUSED, encode, task_name
from castor.registry import ToolRegistry
from castor.seams import ToolCall
from castor.settings import Settings

SECRET = secrets.token_hex(32)


class Touch:
    """A non-idempotent tool that counts how often it really ran."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def touch(self, path: str) -> str:
        with self.lock:
            self.calls += 1
        time.sleep(0.2)  # long enough for the other deliveries to arrive while it runs
        return f"touched {path}"


@pytest.fixture
def tool() -> Touch:
    return Touch()


@pytest.fixture
def runtime(redis_url: str, redis_prefix: str, tool: Touch) -> Iterator[WorkerRuntime]:
    settings = Settings(redis={"url": redis_url, "prefix": redis_prefix}, security={"secret": SECRET})
    made = WorkerRuntime(settings, ToolRegistry([tool.touch]))
    try:
        yield made
    finally:
        made.close()


def job(attempt: int) -> dict[str, Any]:
    arguments = {"path": "/tmp/x"}
    return encode(ToolCall("r", 0, "touch", arguments, checked=arguments, attempt=attempt), "", SECRET)


def journal_the_step(redis_url: str, redis_prefix: str, response: str) -> None:
    """What the lost attempt did before its worker's reply was lost: it journaled the step."""

    async def append() -> None:
        backend = redis_backend(redis_url, prefix=redis_prefix)
        try:
            record = new_record({"tool_name": "touch", "arguments": {"path": "/tmp/x"}}, response)
            await backend.journal.append("r", 0, record)
        finally:
            await backend.close()

    asyncio.run(append())


def test_a_round_reapproved_after_doubt_is_served_from_the_journal(
    runtime: WorkerRuntime, tool: Touch, redis_url: str, redis_prefix: str
) -> None:
    sync = redis.Redis.from_url(redis_url)
    sync.set(keys.started_marker(redis_prefix, "r", 0), 0)  # round 0 started here ...
    journal_the_step(redis_url, redis_prefix, "touched by round 0")  # ... and did finish
    # The step was reported in doubt, a human approved round 1: its task must not run the tool again.
    outcome = runtime.handle(job(1), task_name("touch"))
    assert outcome.status == OK
    assert tool.calls == 0
    assert sync.get(keys.started_marker(redis_prefix, "r", 0)) == b"0"  # a journaled step is not claimed
    sync.close()


def test_a_journaled_step_without_a_marker_is_not_run_again(
    runtime: WorkerRuntime, tool: Touch, redis_url: str, redis_prefix: str
) -> None:
    journal_the_step(redis_url, redis_prefix, "touched before")  # its marker expired or was never set
    assert runtime.handle(job(0), task_name("touch")).status == OK
    assert tool.calls == 0


def test_of_racing_deliveries_exactly_one_executes(runtime: WorkerRuntime, tool: Touch, redis_url: str,
                                                   redis_prefix: str) -> None:
    sync = redis.Redis.from_url(redis_url)
    sync.set(keys.started_marker(redis_prefix, "r", 0), 0)  # round 0 was lost before it journaled
    runtime.process()  # build the process state once, not in every racing thread
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda _: runtime.handle(job(1), task_name("touch")).status, range(4)))
    assert tool.calls == 1
    # the one that claimed it runs it; the others find its heartbeat, wait, and answer with its record
    assert outcomes == [OK, OK, OK, OK]
    # and a late duplicate, once the step is journaled, gets the result
    assert runtime.handle(job(1), task_name("touch")).status == OK
    assert tool.calls == 1
    journal = sync.zrangebyscore(keys.journal(redis_prefix, "r"), 0, 0)
    assert len(journal) == 1 and b"touched /tmp/x" in journal[0]
    sync.close()


def test_copies_of_one_task_message_run_it_once_and_only_the_first_answers(
    runtime: WorkerRuntime, tool: Touch, redis_url: str, redis_prefix: str
) -> None:
    runtime.process()
    copy = Delivery("r:0#0-abcd/0")
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda _: runtime.handle(job(0), task_name("touch"), 0, copy).status, range(4)))
    assert tool.calls == 1
    assert sorted(outcomes) == sorted([OK, DROPPED, DROPPED, DROPPED])
    # Journaled, the step keeps neither its marker nor its deliveries: a late copy, a Celery retry (a new
    # message under the same task id) and a redelivery are all answered from the record, never run again.
    sync = redis.Redis.from_url(redis_url)
    assert sync.exists(keys.started_marker(redis_prefix, "r", 0), keys.deliveries(redis_prefix, "r", 0)) == 0
    sync.close()
    assert runtime.handle(job(0), task_name("touch"), 0, copy).status == OK
    retry = job(0)  # a real retry: its worker counted it in Redis before Celery sent it
    sync = redis.Redis.from_url(redis_url)
    sync.hset(keys.retries(redis_prefix, "r", 0), retry["token"], 1)
    sync.close()
    assert runtime.handle(retry, task_name("touch"), 1, Delivery("r:0#0-abcd/1")).status == OK
    assert runtime.handle(job(0), task_name("touch"), 0, Delivery("r:0#0-abcd/0", redelivered=True)).status == OK
    assert tool.calls == 1


def test_a_redelivered_message_whose_worker_was_lost_is_in_doubt_not_a_copy(
    runtime: WorkerRuntime, tool: Touch, redis_url: str, redis_prefix: str
) -> None:
    sync = redis.Redis.from_url(redis_url)
    # A worker took the message and started the step, then was lost before it journaled anything.
    sync.set(keys.started_marker(redis_prefix, "r", 0), 0)
    sync.hset(keys.deliveries(redis_prefix, "r", 0), "r:0#0-abcd/0", "lost-worker:-1")
    assert runtime.handle(job(0), task_name("touch"), 0, Delivery("r:0#0-abcd/0")).status == DROPPED
    assert runtime.handle(job(0), task_name("touch"), 0, Delivery("r:0#0-abcd/0", redelivered=True)).status == IN_DOUBT
    assert tool.calls == 0
    sync.close()


async def _abandon(redis_url: str, redis_prefix: str, task_id: str) -> int:
    """The coordinator's abandon of task ``task_id`` of step 0 of run ``r``."""
    from castor.backends.redis import RedisConnection

    conn = RedisConnection(redis_url)
    try:
        step = [keys.journal(redis_prefix, "r"), keys.deliveries(redis_prefix, "r", 0)]
        return int(await conn.script("task_abandon", [*step, keys.abandoned(redis_prefix, "r", 0)], [0, task_id, 60]))
    finally:
        await conn.close()


def test_an_abandoned_task_is_dropped_by_every_copy_and_a_new_task_for_the_step_runs(
    runtime: WorkerRuntime, tool: Touch, redis_url: str, redis_prefix: str
) -> None:
    assert asyncio.run(_abandon(redis_url, redis_prefix, "r:0#0-gone")) == 0
    for delivery in (Delivery("r:0#0-gone/0"), Delivery("r:0#0-gone/0"), Delivery("r:0#0-gone/0", redelivered=True)):
        assert runtime.handle(job(0), task_name("touch"), 0, delivery).status == DROPPED
    assert tool.calls == 0
    sync = redis.Redis.from_url(redis_url)
    assert sync.exists(keys.started_marker(redis_prefix, "r", 0)) == 0  # nothing claimed the step
    sync.close()
    # The run goes on (a resumed run sends the step again): a task of its own runs it.
    assert runtime.handle(job(0), task_name("touch"), 0, Delivery("r:0#0-again/0")).status == OK
    assert tool.calls == 1


def test_a_task_a_worker_took_is_not_abandoned_and_a_journaled_step_says_so(
    runtime: WorkerRuntime, tool: Touch, redis_url: str, redis_prefix: str
) -> None:
    runtime.process()
    sync = redis.Redis.from_url(redis_url)
    taken = keys.deliveries(redis_prefix, "r", 0)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(runtime.handle, job(0), task_name("touch"), 0, Delivery("r:0#0-took/0"))
        while not sync.hexists(taken, "r:0#0-took/0"):  # the worker claimed it; the tool runs 0.2 s
            time.sleep(0.01)
        assert asyncio.run(_abandon(redis_url, redis_prefix, "r:0#0-took")) == 1  # taken: wait for it
        assert running.result().status == OK
    assert asyncio.run(_abandon(redis_url, redis_prefix, "r:0#0-took")) == -2  # it ran: the journal has it
    assert tool.calls == 1
    sync.close()


def test_a_delivery_waits_for_a_live_worker_and_goes_in_doubt_once_its_heartbeat_expires(
    runtime: WorkerRuntime, tool: Touch, redis_url: str, redis_prefix: str
) -> None:
    sync = redis.Redis.from_url(redis_url)
    sync.set(keys.started_marker(redis_prefix, "r", 0), 0)  # another worker started round 0 ...
    sync.set(keys.heartbeat(redis_prefix, "r", 0), "elsewhere/1", px=800)  # ... and beat last just now
    began = time.monotonic()
    assert runtime.handle(job(0), task_name("touch")).status == IN_DOUBT
    assert time.monotonic() - began >= 0.7  # it waited while the heartbeat lived, then gave the step up
    assert tool.calls == 0
    sync.close()


def _a_failed(redis_url: str, redis_prefix: str, *, for_good: bool, error_type: str = "PermissionError") -> None:
    """What worker A does when its tool raises: for good (not retried), it records the failure and drops its
    start in one transaction (``_fail_for_good``); retried, it drops its start and records nothing. A refusal
    (``error_type``) is recorded all the same: another delivery refused meanwhile."""
    from castor.checkpoint import StepFailure

    failure = StepFailure(step=0, tool_name="touch", arguments={"path": "/tmp/x"},
                          error_type=error_type, message="read-only file system")
    sync = redis.Redis.from_url(redis_url)
    try:
        with sync.pipeline(transaction=True) as pipe:
            if for_good or error_type == "TaskRefusedError":
                pipe.rpush(keys.failures(redis_prefix, "r"), failure.model_dump_json())
            pipe.delete(keys.started_marker(redis_prefix, "r", 0), keys.heartbeat(redis_prefix, "r", 0))
            pipe.execute()
    finally:
        sync.close()


def _a_runs(redis_url: str, redis_prefix: str) -> None:
    """Worker A started round 0 and is alive (its heartbeat renewed a moment ago)."""
    sync = redis.Redis.from_url(redis_url)
    sync.set(keys.started_marker(redis_prefix, "r", 0), 0)
    sync.set(keys.heartbeat(redis_prefix, "r", 0), "elsewhere/1", px=5000)
    sync.close()


def _worker_a_fails(
    redis_url: str, redis_prefix: str, *, for_good: bool, error_type: str = "PermissionError", after: float = 0.6
) -> threading.Thread:
    """Worker A runs the step; ``after`` seconds later its tool raises (``_a_failed``)."""
    _a_runs(redis_url, redis_prefix)

    def fails() -> None:
        time.sleep(after)
        _a_failed(redis_url, redis_prefix, for_good=for_good, error_type=error_type)

    thread = threading.Thread(target=fails)
    thread.start()
    return thread


def test_a_delivery_waiting_on_a_worker_whose_tool_failed_does_not_run_the_tool_again(
    runtime: WorkerRuntime, tool: Touch, redis_url: str, redis_prefix: str
) -> None:
    """A coordinator that took the run over sent the step again while worker A ran it; A's tool raised for
    good: the waiting delivery used to find the step free and run the tool a second time, for a call already
    answered as failed. It answers with A's failure now."""
    a = _worker_a_fails(redis_url, redis_prefix, for_good=True)
    outcome = runtime.handle(job(0), task_name("touch"))
    a.join()
    assert tool.calls == 0, outcome  # A's run was the step's one
    assert outcome.status == ERROR and "PermissionError: read-only file system" in outcome.detail, outcome
    sync = redis.Redis.from_url(redis_url)
    try:
        assert not sync.exists(keys.started_marker(redis_prefix, "r", 0))  # the start it found free, given back
    finally:
        sync.close()


def test_a_delivery_waiting_on_a_worker_whose_tool_failed_and_is_retried_runs_it_as_the_retry(
    runtime: WorkerRuntime, tool: Touch, redis_url: str, redis_prefix: str
) -> None:
    """A's failure is retried (nothing recorded): the waiting delivery runs the call, once; A's retry then
    finds the step running or journaled."""
    a = _worker_a_fails(redis_url, redis_prefix, for_good=False)
    outcome = runtime.handle(job(0), task_name("touch"))
    a.join()
    assert outcome.status == OK and tool.calls == 1, outcome


def test_a_refusal_recorded_meanwhile_is_not_taken_for_the_running_workers_failure(
    runtime: WorkerRuntime, tool: Touch, redis_url: str, redis_prefix: str
) -> None:
    """Anyone who can write to the broker can have a refusal recorded against the step (a spent task sent again):
    taken for the running worker's failure, it would fail a call whose tool never failed for good. A's failure
    is retried here; the refusal recorded meanwhile is no run of the tool: the delivery runs the call."""
    a = _worker_a_fails(redis_url, redis_prefix, for_good=False, error_type="TaskRefusedError")
    outcome = runtime.handle(job(0), task_name("touch"))
    a.join()
    assert outcome.status == OK and tool.calls == 1, outcome


def test_a_failure_recorded_right_after_the_claim_found_the_step_running_still_answers_it(
    runtime: WorkerRuntime, tool: Touch, redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's failure lands between the claim that found A running and anything this delivery reads next: it used
    to be counted among the failures from before, and the delivery then ran the tool a second time. The
    claim itself tells how many failures came before (read in its atomic step)."""
    _a_runs(redis_url, redis_prefix)
    scripts = runtime.process().scripts
    claim = scripts.claim

    def claim_then_a_fails(job: Any, delivery: Any = None) -> int:
        answer = claim(job, delivery)
        if answer == RUNNING:
            monkeypatch.setattr(scripts, "claim", claim)  # once
            _a_failed(redis_url, redis_prefix, for_good=True)
        return answer

    monkeypatch.setattr(scripts, "claim", claim_then_a_fails)
    outcome = runtime.handle(job(0), task_name("touch"))
    assert tool.calls == 0, outcome
    assert outcome.status == ERROR and "PermissionError: read-only file system" in outcome.detail, outcome


def _two_deliveries(a: WorkerRuntime, b: WorkerRuntime, gap: float) -> list[Any]:
    """Delivery A of the step on worker ``a``, then, ``gap`` seconds later, delivery B on ``b`` (the step sent
    again while A runs it); their outcomes. Both workers are closed after."""
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(a.handle, job(0), task_name("touch"))
            time.sleep(gap)
            second = pool.submit(b.handle, job(0), task_name("touch"))
            return [first.result(10), second.result(10)]
    finally:
        a.close()
        b.close()


def test_two_real_deliveries_of_a_step_whose_tool_fails_for_good_run_it_once(
    redis_url: str, redis_prefix: str
) -> None:
    """End to end in the worker's own code: delivery A runs the step, its tool raises after 0.5 s and is not
    retried; delivery B (the step sent again) came meanwhile and waited on A. Both answer A's failure; the
    tool ran once."""
    ran: list[str] = []

    def touch(path: str) -> str:
        ran.append(path)
        time.sleep(0.5)
        raise PermissionError("read-only file system")

    settings = Settings(redis={"url": redis_url, "prefix": redis_prefix}, security={"secret": SECRET})
    a, b = WorkerRuntime(settings, ToolRegistry([touch])), WorkerRuntime(settings, ToolRegistry([touch]))
    outcomes = _two_deliveries(a, b, 0.2)
    assert ran == ["/tmp/x"], outcomes
    assert all(o.status == ERROR and "PermissionError: read-only file system" in o.detail for o in outcomes), outcomes


def test_a_worker_whose_tool_failed_and_is_retried_leaves_the_next_deliverys_heartbeat_alone(
    redis_url: str, redis_prefix: str
) -> None:
    """A's tool raises and is retried: A drops its start, and, its task ending a moment later, used to drop the
    step's heartbeat key too, which by then could be B's (B waited on A and started the step in that moment).
    B then ran with no heartbeat, and any delivery meanwhile (A's own retry) took the step for one whose worker
    was lost: in doubt, while B ran it. A's thread is held between the two here, as a busy machine may."""
    sync = redis.Redis.from_url(redis_url)
    beat_key = keys.heartbeat(redis_prefix, "r", 0)
    seen: list[bool] = []

    def touch(path: str) -> str:
        if not seen:
            seen.append(True)
            time.sleep(0.4)
            raise ConnectionError("flaky")
        time.sleep(0.9)  # A's task has ended meanwhile
        seen.append(bool(sync.exists(beat_key)))
        return f"touched {path}"

    settings = Settings(redis={"url": redis_url, "prefix": redis_prefix}, security={"secret": SECRET},
                        tools={"retryable": ["touch"], "max_retries": 2})
    a, b = WorkerRuntime(settings, ToolRegistry([touch])), WorkerRuntime(settings, ToolRegistry([touch]))
    beats = a.process().heartbeats
    drop = beats._drop

    def held_then_drop(key: str) -> None:
        time.sleep(0.6)
        drop(key)

    beats._drop = held_then_drop
    try:
        outcomes = _two_deliveries(a, b, 0.1)
    finally:
        sync.close()
    assert outcomes[0].status == ERROR and outcomes[0].retry_in is not None, outcomes
    assert outcomes[1].status == OK, outcomes
    assert seen == [True, True], "B ran its tool with the step's heartbeat gone"


def test_a_delivery_waiting_on_a_worker_starts_nothing_once_its_task_expired(
    runtime: WorkerRuntime, tool: Touch, redis_url: str, redis_prefix: str
) -> None:
    """The wait on a running worker is bounded by the call's deadline, not by when this delivery came: once the
    task expired (its coordinator gave up on the call and settled it), a start found free is not taken."""
    a = _worker_a_fails(redis_url, redis_prefix, for_good=False, after=1.0)
    outcome = runtime.handle(job(0), task_name("touch"), delivery=Delivery("t-1/0", expires=time.time() + 0.5))
    a.join()
    assert outcome.status == DROPPED and tool.calls == 0, outcome


def test_the_wait_ends_at_the_signed_deadline_whatever_the_broker_says_of_expiry(
    runtime: WorkerRuntime, tool: Touch, redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task whose ``expires`` is gone (or rewritten on the broker) still ends its wait once its signed
    ``issued`` is as long past as the call may take."""
    from castor.settings import call_deadline, tool_policy

    spec = runtime.registry.get("touch")
    policy = tool_policy(runtime.settings, spec)
    signed_at = time.time() - call_deadline(runtime.settings, policy.timeout, policy.retryable) + 0.5
    monkeypatch.setattr("castor.fleet.wire.time.time", lambda: signed_at)
    old = job(0)
    monkeypatch.undo()
    a = _worker_a_fails(redis_url, redis_prefix, for_good=False, after=1.0)
    outcome = runtime.handle(old, task_name("touch"), delivery=Delivery("t-2/0", expires=time.time() + 3600))
    a.join()
    assert outcome.status == DROPPED and tool.calls == 0, outcome


def test_a_tasks_expiry_is_read_as_celery_sends_it() -> None:
    from datetime import UTC, datetime

    from castor.fleet.workers.tasks import _expiry

    at = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
    assert _expiry(at.isoformat()) == at.timestamp()
    assert _expiry(at) == at.timestamp()
    assert _expiry(at.replace(tzinfo=None).isoformat()) == at.timestamp()  # naive: UTC, as Celery's clock is
    assert _expiry("next tuesday") is None and _expiry(None) is None and _expiry(12) is None


@pytest.mark.parametrize("lean", [True, False])
def test_a_claim_that_finds_the_step_running_tells_how_many_failures_came_before(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch, lean: bool
) -> None:
    """Over the worker's own socket (hiredis) and over redis-py alike."""
    from castor.fleet.workers._scripts import Running, StepScripts

    from castor.fleet.wire import Job

    if not lean:
        monkeypatch.setattr("castor.fleet.workers._lean.available", lambda url: False)
    _a_runs(redis_url, redis_prefix)
    sync = redis.Redis.from_url(redis_url)
    sync.rpush(keys.failures(redis_prefix, "r"), "{}", "{}")  # two failures of other steps, before
    sync.close()
    scripts = StepScripts(redis_url, redis_prefix, worker="w")
    try:
        answer = scripts.claim(Job("r", 0, "touch", {}))
    finally:
        scripts.close()
    assert answer == RUNNING and isinstance(answer, Running) and answer.failures == 2


def _always_failing(redis_url: str, redis_prefix: str, max_retries: int) -> tuple[WorkerRuntime, list[str]]:
    """A worker whose retryable tool always raises a transient error; the list of its runs."""
    ran: list[str] = []

    def touch(path: str) -> str:
        ran.append(path)
        raise ConnectionError("the disk is away")

    settings = Settings(redis={"url": redis_url, "prefix": redis_prefix}, security={"secret": SECRET},
                        tools={"retryable": ["touch"], "max_retries": max_retries, "retry_backoff": 0.1})
    return WorkerRuntime(settings, ToolRegistry([touch])), ran


def test_a_calls_retries_are_counted_in_redis_not_restarted_by_copies_of_its_task(
    redis_url: str, redis_prefix: str
) -> None:
    """The token signs a task's kwargs, not its headers: a broker writer's copies of a signed task may claim any
    ``retries`` count. Copies claiming none used to restart the count, each earning a retry: the failing call
    ran as often as copies came. Counted in Redis, the call runs 1 + max_retries times, its retries numbered
    1, 2; the next failure is final, and a copy after that is refused unrun."""
    runtime, ran = _always_failing(redis_url, redis_prefix, max_retries=2)
    signed = job(0)  # one task, read off the broker: its copies carry the same token
    try:
        outcomes = [runtime.handle(dict(signed), task_name("touch"), 0, Delivery(f"t-{n}/0")) for n in range(4)]
    finally:
        runtime.close()
    assert [(o.retry_in, o.retries) for o in outcomes[:2]] == [(0.1, 1), (0.2, 2)], outcomes
    assert outcomes[2].status == ERROR and outcomes[2].retry_in is None, outcomes
    assert "ConnectionError: the disk is away" in outcomes[2].detail
    assert outcomes[3].status == REFUSED and "ran and failed" in outcomes[3].detail, outcomes[3]
    assert len(ran) == 3


def test_a_copy_numbered_as_a_retry_its_call_never_had_is_refused_unrun(redis_url: str, redis_prefix: str) -> None:
    """A copy claiming the call's retries spent used to make its first transient failure final. A message
    numbered above the retries its workers counted is refused unrun (a dead letter: the call is live); the
    call's real retry, numbered as counted, runs."""
    runtime, ran = _always_failing(redis_url, redis_prefix, max_retries=2)
    signed = job(0)
    try:
        forged = runtime.handle(dict(signed), task_name("touch"), 2, Delivery("t-1/2"))
        assert forged.status == REFUSED and "numbered retry 2 of a call that had 0" in forged.detail, forged
        assert ran == []
        first = runtime.handle(dict(signed), task_name("touch"), 0, Delivery("t-1/0"))
        assert first.retries == 1, first
        retried = runtime.handle(dict(signed), task_name("touch"), 1, Delivery("t-1/1"))
        assert retried.retries == 2 and len(ran) == 2, retried
        sync = redis.Redis.from_url(redis_url)
        letters = sync.lrange(keys.dead_letters(redis_prefix, "default"), 0, -1)
        sync.close()
        assert len(letters) == 1 and b"numbered retry 2" in letters[0]
    finally:
        runtime.close()


def test_a_retry_asked_again_after_a_lost_connection_is_counted_once(redis_url: str, redis_prefix: str) -> None:
    """The worker asks its retry again when the connection was lost (it may have run): under the same receipt the
    script answers as it first did, so a reply lost in an outage does not spend one of the call's retries."""
    from castor.fleet.workers._scripts import RETRY

    client = redis.Redis.from_url(redis_url)
    retry = RETRY.register(client)
    counts = keys.retries(redis_prefix, "r", 0)
    marker = keys.started_marker(redis_prefix, "r", 0)
    try:
        client.set(marker, 0)
        args = ["token-1", "receipt-1", 2, 60]
        key_list = [counts, marker, keys.heartbeat(redis_prefix, "r", 0)]
        assert [retry(keys=key_list, args=args) for _ in range(3)] == [1, 1, 1]
        assert not client.exists(marker)  # given back for the retry
        assert retry(keys=key_list, args=["token-1", "receipt-2", 2, 60]) == 2
        client.set(marker, 0)
        assert retry(keys=key_list, args=["token-1", "receipt-3", 2, 60]) == 0  # its retries had: final
        assert client.exists(marker)  # kept for the failure, which drops it with the record
    finally:
        client.close()


def test_a_fourth_retry_is_sent_when_the_settings_allow_it(redis_url: str, redis_prefix: str) -> None:
    """Celery refuses to send a task's retry past the task's own ``max_retries`` (3 unless set), whatever the
    ``[tools] max_retries`` asks for (up to 30): the task ended in Celery's MaxRetriesExceededError, with its
    start given back and no failure recorded, no reply: the call answered nothing until its deadline. The
    tasks leave the count to the settings; the retry goes out numbered as Redis counted it."""
    from castor.fleet.workers.tasks import register_tools
    from celery import Celery
    from celery.exceptions import Retry

    runtime, ran = _always_failing(redis_url, redis_prefix, max_retries=5)
    app = Celery("retries", set_as_current=False, broker="memory://")
    register_tools(app, runtime)
    task = app.tasks[task_name("touch")]
    signed = job(0)
    sync = redis.Redis.from_url(redis_url)
    try:
        sync.hset(keys.retries(redis_prefix, "r", 0), signed["token"], 3)  # three retries so far
        retried = _delivered(task, signed, 3, Retry)
        assert "Retry in 0.8s" in str(retried) and len(ran) == 1
        assert sync.hget(keys.retries(redis_prefix, "r", 0), signed["token"]) == b"4"
        with app.connection_for_write() as connection:
            queue = connection.SimpleQueue(app.conf.task_default_queue)
            message = queue.get(timeout=5)
            assert message.headers["retries"] == 4 and message.headers["id"] == "t-1"
            queue.close()
    finally:
        sync.close()
        runtime.close()
        app.close()


def test_a_retry_the_broker_cannot_take_fails_the_step_with_the_tools_error(redis_url: str, redis_prefix: str) -> None:
    """A retryable tool raised and its retry could not be sent (the broker away past its publish retries): the
    task ended in the broker's error, its message acknowledged, the step's start given back, and nothing
    recorded or answered; the call said nothing until its deadline, then that no worker gave a result. The
    step now fails for good with the tool's error and why it was not retried (recorded once, the token spent,
    as any final failure)."""
    signed = job(0)
    with _retries_refused(redis_url, redis_prefix) as (_, ran, task), redis.Redis.from_url(redis_url) as sync:
        failed = _delivered(task, signed, 0, ToolCallFailed)
        assert "ConnectionError: the disk is away (not retried: its retry could not be sent" in str(failed)
        assert len(ran) == 1
        [recorded] = sync.lrange(keys.failures(redis_prefix, "r"), 0, -1)
        assert b"not retried: its retry could not be sent" in recorded
        assert sync.sismember(keys.spent_tokens(redis_prefix, "r", 0), signed["token"])  # a copy runs nothing


@contextlib.contextmanager
def _retries_refused(redis_url: str, redis_prefix: str) -> Iterator[tuple[WorkerRuntime, list[str], Any]]:
    """A worker whose retryable tool always raises (``_always_failing``), its task registered on a Celery app
    whose broker nothing listens at: every retry it sends is refused. The runtime, the tool's runs, the task."""
    from castor.fleet.workers.tasks import register_tools
    from celery import Celery

    runtime, ran = _always_failing(redis_url, redis_prefix, max_retries=2)
    app = Celery("unsent", set_as_current=False, broker="redis://127.0.0.1:1/0")  # nothing listens there
    app.conf.task_publish_retry = False
    register_tools(app, runtime)
    try:
        yield runtime, ran, app.tasks[task_name("touch")]
    finally:
        runtime.close()
        app.close()


@pytest.mark.parametrize("copy", ["running", "finished"])
def test_a_retry_the_broker_cannot_take_fails_nothing_a_copy_took_meanwhile(
    redis_url: str, redis_prefix: str, copy: str
) -> None:
    """The step's start is given back before its retry is sent: a copy of the task (the same token) may take
    it while the broker refuses the retry. That copy runs the call and answers it; failing the step for good
    beside it recorded a failure of a call still running (or finished), and spent the token under it. Now the
    refused retry ends the task, dropped, and leaves the step to the copy."""
    signed = job(0)
    with _retries_refused(redis_url, redis_prefix) as (runtime, ran, task), redis.Redis.from_url(redis_url) as sync:
        handle = runtime.handle

        def a_copy_takes_the_start(*args: Any) -> Any:
            outcome = handle(*args)  # the tool failed; its start is given back for the retry
            copied = parse_job(dict(signed), runtime.settings)
            assert runtime.process().scripts.claim(copied, Delivery("t-2/0")) == -1  # the copy starts the step
            if copy == "finished":  # journaled, its start dropped, as finish.lua does
                journal_the_step(redis_url, redis_prefix, "done by the copy")
                sync.delete(keys.started_marker(redis_prefix, "r", 0), keys.heartbeat(redis_prefix, "r", 0))
            return outcome

        runtime.handle = a_copy_takes_the_start
        ended = _delivered(task, signed, 0)
        assert ended.startswith("dropped: another delivery took the call"), ended
        assert len(ran) == 1
        assert sync.lrange(keys.failures(redis_prefix, "r"), 0, -1) == []
        assert not sync.sismember(keys.spent_tokens(redis_prefix, "r", 0), signed["token"])
        assert sync.exists(keys.started_marker(redis_prefix, "r", 0)) == (copy == "running")


def _delivered(task: Any, signed: dict[str, Any], retries: int, ends: type[BaseException] | None = None) -> Any:
    """Run the registered Celery ``task`` on ``signed`` as a worker would a message numbered ``retries`` (task id
    t-1): what it returns, or, given ``ends``, the ``ends`` it must raise."""
    task.push_request(id="t-1", retries=retries, called_directly=False, delivery_info={}, kwargs=signed, args=[])
    try:
        if ends is None:
            return task.run(**signed)
        with pytest.raises(ends) as ended:
            task.run(**signed)
    finally:
        task.pop_request()
    return ended.value


@pytest.mark.parametrize("reason", ["cancelled", "drained"])
def test_a_task_of_a_cancelled_run_starts_nothing(
    runtime: WorkerRuntime, tool: Touch, redis_url: str, redis_prefix: str, reason: str
) -> None:
    """The run was stored stopped, through the store's own save, while its task waited on the queue. Cancelled
    by an operator: the task is dropped unrun and nothing is marked (a resume sends the step again). Handed
    on (drained): the step starts, for whichever drive of the run sent it."""
    from castor.kernel.runner import new_checkpoint

    async def stop_the_run() -> None:
        backend = redis_backend(redis_url, prefix=redis_prefix)
        try:
            cp = new_checkpoint("r", "agent", {})
            cp.status, cp.preemption_reason = "PREEMPTED", reason
            await backend.runs.save(cp)
        finally:
            await backend.close()

    asyncio.run(stop_the_run())
    outcome = runtime.handle(job(0), task_name("touch"), 0, Delivery("t-1/0"))
    sync = redis.Redis.from_url(redis_url)
    try:
        if reason == "cancelled":
            assert (outcome.status, outcome.detail) == (DROPPED, "dropped: its run was cancelled")
            assert tool.calls == 0 and not sync.exists(keys.started_marker(redis_prefix, "r", 0))
        else:
            assert outcome.status == OK and tool.calls == 1
    finally:
        sync.close()
