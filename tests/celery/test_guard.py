"""Who may make a worker run a tool. With a secret, only a task its coordinator signed, whatever the tool;
without one, nothing, unless the fleet is an insecure development one, where an unsigned task of a
destructive tool runs only as the call a human approved: that tool, those arguments, that round. Against
the real Redis in this process (no Celery worker needed)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from castor.fleet.workers.runtime import WorkerRuntime

from castor import castor_tool
from castor.backends.redis import keys, redis_backend
from castor.checkpoint import StepFailure
from castor.fleet.wire import OK, REFUSED, encode, task_name
from castor.registry import ToolRegistry
from castor.seams import Decision, PendingApproval, ToolCall
from castor.settings import Settings

RAN: list[dict[str, Any]] = []
SECRET = "a-secret-of-the-fleet-" + "x" * 20


@castor_tool(destructive=True, sensitive=["key"])
def wipe(path: str, depth: int, key: str) -> str:
    """Destructive, with a sensitive argument; records what it was called with."""
    RAN.append({"path": path, "depth": depth, "key": key})
    return f"wiped {path}"


@pytest.fixture
def runtime(redis_url: str, redis_prefix: str) -> Iterator[WorkerRuntime]:
    RAN.clear()
    settings = Settings(redis={"url": redis_url, "prefix": redis_prefix}, security={"insecure_dev": True})  # no secret
    made = WorkerRuntime(settings, ToolRegistry([wipe]))
    try:
        yield made
    finally:
        made.close()


def approve(redis_url: str, redis_prefix: str, run_id: str, arguments: dict[str, Any]) -> None:
    """A human approved step 0 of ``run_id``: ``wipe`` with ``arguments`` (as the agent passed them)."""

    async def decide() -> None:
        backend = redis_backend(redis_url, prefix=redis_prefix)
        try:
            await backend.approvals.request(PendingApproval(run_id, 0, "wipe", arguments, time.time()))
            await backend.approvals.decide(Decision(run_id, 0, "approve", "alice", time.time()))
        finally:
            await backend.close()

    asyncio.run(decide())


def failures(redis_url: str, redis_prefix: str, run_id: str) -> list[StepFailure]:
    async def read() -> list[StepFailure]:
        backend = redis_backend(redis_url, prefix=redis_prefix)
        try:
            return await backend.journal.failures(run_id)
        finally:
            await backend.close()

    return asyncio.run(read())


def unsigned(run_id: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return encode(ToolCall(run_id, 0, "wipe", arguments), "", None)


def test_the_approved_call_runs_with_the_arguments_the_schema_checked(
    runtime: WorkerRuntime, redis_url: str, redis_prefix: str
) -> None:
    approve(redis_url, redis_prefix, "g1", {"path": "/tmp/a", "depth": "2", "key": "k"})
    # The coordinator sends the checked arguments ("2" coerced to 2): the same call as the one approved.
    outcome = runtime.handle(unsigned("g1", {"path": "/tmp/a", "depth": 2, "key": "k"}), task_name("wipe"))
    assert outcome.status == OK
    assert RAN == [{"path": "/tmp/a", "depth": 2, "key": "k"}]


def test_other_arguments_are_refused_without_showing_sensitive_values(
    runtime: WorkerRuntime, redis_url: str, redis_prefix: str
) -> None:
    approve(redis_url, redis_prefix, "g2", {"path": "/tmp/a", "depth": 1, "key": "hunter2"})
    outcome = runtime.handle(unsigned("g2", {"path": "/", "depth": 1, "key": "hunter2"}), task_name("wipe"))
    assert outcome.status == REFUSED
    assert RAN == []
    [failure] = failures(redis_url, redis_prefix, "g2")
    assert failure.error_type == "TaskRefusedError"
    assert failure.message == (
        "approval for run g2 step 0 was given for wipe({'path': '/tmp/a', 'depth': 1, 'key': '***'}), "
        "not these arguments"
    )
    assert failure.arguments == {"path": "/", "depth": 1, "key": "***"}


@pytest.mark.parametrize("extra", [{"extra": 1}, {}])
def test_a_refusal_writes_to_no_key_but_a_reply_stream(
    runtime: WorkerRuntime, redis_url: str, redis_prefix: str, extra: dict[str, Any]
) -> None:
    import redis

    victim = keys.scope(redis_prefix, "victim")
    kwargs = {**unsigned("g3", {"path": "/", "depth": 1, "key": "k"}), "reply_to": victim, **extra}
    assert runtime.handle(kwargs, task_name("wipe")).status == REFUSED
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.exists(victim) == 0
    finally:
        client.close()
    assert RAN == []


def test_an_approved_call_naming_a_key_that_is_no_reply_stream_is_refused_and_writes_nothing_there(
    runtime: WorkerRuntime, redis_url: str, redis_prefix: str
) -> None:
    """An insecure development fleet keeps the reply-stream shape: the very call a human approved, sent
    with a ``reply_to`` naming another key (a scope, a stream of another shape), is refused before it
    runs, and its finish writes to no key the message names."""
    client = redis.Redis.from_url(redis_url)
    try:
        for n, victim in enumerate([keys.scope(redis_prefix, "victim"), f"{keys.reply_stream(redis_prefix, 'c')}:x"]):
            run_id, arguments = f"g4-{n}", {"path": "/tmp/a", "depth": 1, "key": "k"}
            approve(redis_url, redis_prefix, run_id, arguments)
            kwargs = {**unsigned(run_id, arguments), "reply_to": victim}
            outcome = runtime.handle(kwargs, task_name("wipe"))
            assert client.exists(victim) == 0, victim
            assert outcome.status == REFUSED
        assert RAN == []
    finally:
        client.close()


@castor_tool
def jot(text: str) -> str:
    """A plain tool: not destructive, not gated."""
    RAN.append({"text": text})
    return text


@pytest.fixture
def guarded(redis_url: str, redis_prefix: str) -> Iterator[Callable[..., WorkerRuntime]]:
    """Worker runtimes serving ``jot`` and ``wipe`` with the settings a test gives."""
    RAN.clear()
    made: list[WorkerRuntime] = []

    def build(**security: Any) -> WorkerRuntime:
        made.append(WorkerRuntime(Settings(redis={"url": redis_url, "prefix": redis_prefix}, security=security),
                                  ToolRegistry([jot, wipe])))
        return made[-1]

    yield build
    for runtime in made:
        runtime.close()


def letters(redis_url: str, redis_prefix: str) -> list[dict[str, Any]]:
    """The default pool's dead letters, oldest first."""
    client = redis.Redis.from_url(redis_url)
    try:
        return [json.loads(raw) for raw in reversed(client.lrange(keys.dead_letters(redis_prefix, "default"), 0, -1))]
    finally:
        client.close()


def jot_task(run_id: str, token_secret: str | None = None) -> dict[str, Any]:
    return encode(ToolCall(run_id, 0, "jot", {"text": "hello"}), "", token_secret)


def test_a_worker_with_a_secret_refuses_an_unsigned_or_missigned_plain_tool_task(
    guarded: Callable[..., WorkerRuntime], redis_url: str, redis_prefix: str
) -> None:
    runtime = guarded(secret=SECRET)
    assert runtime.handle(jot_task("p1"), task_name("jot")).status == REFUSED
    assert runtime.handle(jot_task("p2", token_secret="change-me"), task_name("jot")).status == REFUSED
    assert RAN == []
    # Not journaled (it could be anyone's): the pool's dead letters say why.
    assert [d["reason"].split(" (")[0] for d in letters(redis_url, redis_prefix)] == [
        "no authorization token for 'jot'", "invalid authorization token for 'jot'",
    ]
    assert failures(redis_url, redis_prefix, "p1") == failures(redis_url, redis_prefix, "p2") == []
    assert runtime.handle(jot_task("p3", token_secret=SECRET), task_name("jot")).status == OK
    assert RAN == [{"text": "hello"}]


def test_a_worker_with_a_secret_refuses_an_unsigned_destructive_call_even_once_approved(
    guarded: Callable[..., WorkerRuntime], redis_url: str, redis_prefix: str
) -> None:
    runtime = guarded(secret=SECRET, insecure_dev=True)  # not even in a development fleet: it has a secret
    approve(redis_url, redis_prefix, "p4", {"path": "/tmp/a", "depth": 1, "key": "k"})
    outcome = runtime.handle(unsigned("p4", {"path": "/tmp/a", "depth": 1, "key": "k"}), task_name("wipe"))
    assert outcome.status == REFUSED and RAN == []


def test_a_worker_without_a_secret_runs_nothing_outside_a_development_fleet(
    guarded: Callable[..., WorkerRuntime], redis_url: str, redis_prefix: str
) -> None:
    runtime = guarded()
    assert runtime.handle(jot_task("p5"), task_name("jot")).status == REFUSED
    assert RAN == []
    assert "this worker has no secret" in letters(redis_url, redis_prefix)[0]["reason"]
    assert failures(redis_url, redis_prefix, "p5") == []
    assert guarded(insecure_dev=True).handle(jot_task("p6"), task_name("jot")).status == OK


def test_an_approval_of_another_round_lends_no_authority() -> None:
    """The request a human approved must be of the task's round: after a loss in doubt opens round 1, the
    call approved in round 0 is not this one, even with the same tool and arguments."""
    from castor.fleet.workers._guard import Refusal, check_approved_call

    from castor.fleet.wire import decode
    from castor.settings import tool_policy

    arguments = {"path": "/tmp/a", "depth": 1, "key": "k"}
    job = decode(encode(ToolCall("g9", 0, "wipe", arguments, attempt=1), "", None, checked=arguments))
    spec = ToolRegistry([wipe]).get("wipe")
    policy = tool_policy(Settings(), spec)
    round_0 = PendingApproval("g9", 0, "wipe", arguments, time.time(), attempt=0)
    with pytest.raises(Refusal, match=r"approval for run g9 step 0 \(round 1\) does not say which call"):
        check_approved_call(job, spec, policy, round_0)
    check_approved_call(job, spec, policy, PendingApproval("g9", 0, "wipe", arguments, time.time(), attempt=1))
