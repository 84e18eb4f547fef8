"""A failover to a Redis replica loses no claim a call ran under (``replicas=N``: Redis's ``WAIT``).

Redis replicates asynchronously: a primary acknowledges a write, then sends it on. One that dies in between
has lost the write once its replica is promoted. A step's claim lost so let the promoted Redis hand the step
out again: the call, which ran under that claim, ran twice. Against a primary and a replica of the test's
own, the replication link through a relay that can stop passing the primary's stream on (a link that lags,
as it does under load or across a network), with the primary killed and the replica promoted as Sentinel
or a managed Redis would."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from castor import Castor, castor_tool
from castor.backends.redis import keys
from castor.backends.redis.replicas import Acks
from castor.errors import BackendUnavailable, ConfigError
from castor.lib import tool
from castor.settings import Settings
from tests.redis_support import ReplicationLink, primary_and_replica

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[str, str, ReplicationLink, subprocess.Popen[bytes]]]:
    """A primary and its replica, through a link the test can make lag."""
    with primary_and_replica(tmp_path) as servers:
        yield servers


# --- the agent: a lookup, then a charge that must never run twice -------------------------------------------

async def lookup(order: str) -> str:
    """Read-only."""
    return f"order {order}: 12.50 EUR"


async def _lag_if_asked() -> None:
    """Where $LAG names a file, the replication link starts lagging now: the file is made; the test, which
    owns the link, makes it lag and removes the file."""
    signal = os.environ.get("LAG")
    if signal:
        Path(signal).touch()
        deadline = time.monotonic() + 5
        while Path(signal).exists():
            assert time.monotonic() < deadline, "the test did not make the link lag"
            await asyncio.sleep(0.01)


@castor_tool(idempotent=False)
async def charge(order: str) -> str:
    """Charges a card: each run is a line of the file named by $CHARGES."""
    with open(os.environ["CHARGES"], "a") as out:
        out.write(f"{order}\n")
    return f"charged {order}"


async def checkout() -> object:
    await tool("lookup", order="A-1")
    await _lag_if_asked()  # the lookup is journaled, on the replica too
    return await tool("charge", order="A-1")


def _kernel(url: str) -> Castor:
    return Castor(tools=[lookup, charge], store=url)


def first_part(url: str) -> None:
    """The run's first drive, in a process of its own, as a program that stops with its Redis would be."""

    async def go() -> None:
        kernel = _kernel(url)
        try:
            await kernel.run(checkout, pid="order-A-1")
        finally:
            await kernel.close()

    try:
        asyncio.run(go())
    except BackendUnavailable as exc:
        print(f"unavailable: {exc}")
        sys.exit(3)


def _drive_first_part(
    store: str, link: ReplicationLink, tmp_path: Path, charges: Path
) -> subprocess.CompletedProcess[str]:
    lag = tmp_path / "lag"
    env = {**os.environ, "CHARGES": str(charges), "LAG": str(lag), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from tests.redis.test_replicas import first_part; first_part({store!r})"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None:
        if lag.exists():
            link.lag()
            lag.unlink()
        assert time.monotonic() < deadline, "the first part did not end"
        time.sleep(0.01)
    out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _fail_over(primary: subprocess.Popen[bytes], link: ReplicationLink, replica_url: str) -> None:
    """The primary dies with what it did not send on; its replica is promoted."""
    primary.kill()
    primary.wait(timeout=10)
    link.close()
    client = redis.Redis.from_url(replica_url)
    try:
        client.execute_command("REPLICAOF", "NO", "ONE")
    finally:
        client.close()


def _charged(charges: Path) -> list[str]:
    return charges.read_text().split() if charges.exists() else []


@pytest.mark.fleet  # a primary, a replica and a program of their own
async def test_a_failover_loses_no_claim_a_call_ran_under(
    pair: tuple[str, str, ReplicationLink, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """The charge's claim reaches the primary, not the replica: with ``replicas=1`` the claim is not taken
    (given back, the program stops: Redis unavailable) and the charge does not run; after the failover the
    run is resumed on the promoted replica and charges once. Without the wait, the charge ran under a claim
    the replica never had, and ran again after the failover."""
    primary_url, replica_url, link, primary = pair
    charges = tmp_path / "charges"
    store = f"{primary_url}?prefix=fo&at_most_once=1&replicas=1&replica_timeout=3"
    first = _drive_first_part(store, link, tmp_path, charges)
    client = redis.Redis.from_url(primary_url, decode_responses=True)
    try:
        claims_left = client.hkeys(keys.claims("fo", "order-A-1"))
    finally:
        client.close()

    _fail_over(primary, link, replica_url)
    os.environ["CHARGES"] = str(charges)
    kernel = _kernel(f"{replica_url}?prefix=fo&at_most_once=1")
    try:
        cp = await kernel.run(checkout, checkpoint=await kernel.aload("order-A-1"))
    finally:
        await kernel.close()
        del os.environ["CHARGES"]
    assert _charged(charges) == ["A-1"]  # twice without the wait: before the failover, and after it
    assert first.returncode == 3, first.stdout + first.stderr
    assert "the claim of run 'order-A-1' step 1: 0 of the 1 Redis replica(s)" in first.stdout, first.stdout
    assert claims_left == []  # given back: nobody waits out its lease
    assert cp.status == "COMPLETED", cp.status
    assert _charged(charges) == ["A-1"]


@pytest.mark.fleet  # a primary and a replica of their own
async def test_with_its_replica_keeping_up_a_run_waits_for_it_and_the_replica_has_every_record(
    pair: tuple[str, str, ReplicationLink, subprocess.Popen[bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    primary_url, replica_url, _, _ = pair
    monkeypatch.setenv("CHARGES", str(tmp_path / "charges"))
    kernel = _kernel(f"{primary_url}?prefix=ok&at_most_once=1&replicas=1&replica_timeout=3")
    try:
        cp = await kernel.run(checkout, pid="order-B")
    finally:
        await kernel.close()
    assert cp.status == "COMPLETED"
    # Read at once, no wait: what a record's append returned for, the replica had.
    client = redis.Redis.from_url(replica_url)
    try:
        assert client.zcard(keys.journal("ok", "order-B")) == 2
        assert int(client.get(keys.replicated("ok")) or 0) >= 3  # the drive, the claim, the records waited
    finally:
        client.close()


@pytest.mark.fleet  # a primary and a replica of their own
async def test_a_drive_no_replica_acknowledges_is_refused_before_anything_runs(
    pair: tuple[str, str, ReplicationLink, subprocess.Popen[bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    primary_url, _, link, _ = pair
    link.lag()
    monkeypatch.setenv("CHARGES", str(tmp_path / "charges"))
    kernel = _kernel(f"{primary_url}?prefix=lag&replicas=1&replica_timeout=0.2")
    try:
        with pytest.raises(BackendUnavailable) as refused:
            await kernel.run(checkout, pid="order-C")
    finally:
        await kernel.close()
    assert "the drive of run 'order-C': 0 of the 1 Redis replica(s) asked for" in str(refused.value)
    assert "failover now could lose it" in str(refused.value)
    assert not (tmp_path / "charges").exists()
    client = redis.Redis.from_url(primary_url)
    try:
        assert client.hkeys(keys.claims("lag", "order-C")) == []
    finally:
        client.close()


async def test_one_probe_answers_every_waiter_that_wrote_before_it_went_out() -> None:
    """A thousand claims at once wait for one or two probes, not a thousand; a failed probe fails its batch
    only; a waiter that came while a probe was out waits for the next one."""
    sent: list[int] = []
    release = asyncio.Event()

    async def probe() -> int:
        sent.append(len(sent))
        await release.wait()
        if len(sent) == 2:
            raise BackendUnavailable("Redis went away")
        return 1

    acks = Acks(probe)
    first = [asyncio.ensure_future(acks.wait()) for _ in range(500)]
    await asyncio.sleep(0)  # the first probe is out: these join the next batch
    second = [asyncio.ensure_future(acks.wait()) for _ in range(500)]
    await asyncio.sleep(0)
    assert len(sent) == 1
    release.set()
    assert await asyncio.gather(*first) == [1] * 500
    failed = await asyncio.gather(*second, return_exceptions=True)
    assert all(isinstance(f, BackendUnavailable) for f in failed) and len(sent) == 2
    assert await acks.wait() == 1 and len(sent) == 3


def test_replica_settings_reach_the_store_and_a_timeout_past_the_socket_is_refused() -> None:
    settings = Settings(redis={"replicas": 2, "replica_timeout": 0.5})
    assert settings.redis.store_options() == {"allow_eviction": False, "replicas": 2, "replica_timeout": 0.5}
    with pytest.raises(ConfigError, match="replica_timeout=5 must be above 0 and below socket_timeout=5"):
        Castor(tools=[lookup], store="redis://127.0.0.1:1/0?replicas=1&replica_timeout=5")


@pytest.mark.fleet  # a primary and a replica of their own
@pytest.mark.parametrize("lean", [True, False], ids=["hiredis-socket", "redis-py"])
def test_a_workers_wait_for_replicas_asks_on_one_connection(
    pair: tuple[str, str, ReplicationLink, subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch, lean: bool
) -> None:
    """The worker's probe (``StepScripts.short_of_replicas``) both ways its connection can be made: a ``WAIT``
    on a connection that wrote nothing would count every replica at once."""
    from castor.fleet.workers import _lean
    from castor.fleet.workers._scripts import StepScripts

    if not lean:
        monkeypatch.setattr(_lean, "available", lambda url: False)
    elif not _lean.available(pair[0]):
        pytest.fail("hiredis is part of the dev extra: the lean connection must be there")
    primary_url, _, link, _ = pair
    scripts = StepScripts(primary_url, "w", replicas=1, replica_timeout=2)
    try:
        assert scripts.short_of_replicas() == ""
        link.lag()
        assert scripts.short_of_replicas() == (
            "0 of the 1 Redis replica(s) asked for ([redis] replicas) acknowledged it within 2 s"
        )
        link.catch_up()
        assert scripts.short_of_replicas() == ""
    finally:
        scripts.close()


def _answering(
    scripts: Any, direct: redis.Redis, job: Any, answer: str
) -> tuple[Callable[[float | None], bool], Callable[[], int]]:
    """How a worker answers ``job`` (``answer``: its tool's result, or its final failure) by its
    ``StepScripts``, given the call's deadline (``time.monotonic()``, None for none); and how many such
    records the primary holds."""
    from castor.checkpoint import StepFailure, new_record
    from castor.fleet.wire import ERROR, OK, Reply

    if answer == "result":
        record = new_record({"tool_name": "lookup", "arguments": {}}, "found")
        return (lambda until: scripts.finish(job, record, Reply(job.effect_id, 0, OK, "found"), until),
                lambda: direct.zcard(keys.journal("w", "r")))
    failure = StepFailure(step=0, tool_name="lookup", arguments={}, error_type="OSError", message="disk full")
    reply = Reply(job.effect_id, 0, ERROR, None, "OSError", "disk full", True)
    return (lambda until: scripts.fail(job, failure.model_dump_json(), reply, 60, False, until),
            lambda: direct.llen(keys.failures("w", "r")))


@pytest.mark.fleet  # a primary and a replica of their own
@pytest.mark.parametrize("answer", ["result", "failure"])
def test_a_workers_answer_goes_out_only_once_the_replica_has_its_record(
    pair: tuple[str, str, ReplicationLink, subprocess.Popen[bytes]], answer: str
) -> None:
    """With ``replicas``, a worker recorded a result (or its tool's final failure) and answered its coordinator
    in one script, the replica not waited for: a failover then (a Sentinel giving up on the primary that took
    the record, say) lost the record after the coordinator had heard the answer, and it went on from a step
    the new primary did not have. The answer now waits until the replica has the record, written once."""
    from castor.fleet.workers._scripts import StepScripts

    from castor.fleet.wire import Job

    primary_url, _, link, _ = pair
    scripts = StepScripts(primary_url, "w", replicas=1, replica_timeout=0.5)
    direct = redis.Redis.from_url(primary_url)
    job = Job("r", 0, "lookup", {}, reply_to="w:replies", token="signed-task")
    answered, recorded = _answering(scripts, direct, job, answer)
    try:
        assert scripts.claim(job) == -1
        link.lag()
        with ThreadPoolExecutor(1) as pool:
            answering = pool.submit(answered, None)
            deadline = time.monotonic() + 10
            while not recorded() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert recorded() == 1  # on the primary
            time.sleep(1.6)  # its waits for the replica, and a write again
            assert direct.xlen("w:replies") == 0, "answered before the replica had the record"
            link.catch_up()
            assert answering.result(15) is True
        assert direct.xlen("w:replies") == 1  # answered once
        assert recorded() == 1  # recorded once, however often it was written again
    finally:
        scripts.close()
        direct.close()


@pytest.mark.fleet  # a primary and a replica of their own
@pytest.mark.parametrize("answer", ["result", "failure"])
def test_a_workers_answer_waits_for_the_replica_no_longer_than_the_calls_deadline(
    pair: tuple[str, str, ReplicationLink, subprocess.Popen[bytes]], answer: str
) -> None:
    """Past the call's deadline its coordinator no longer waits for the answer (it reads the journal itself):
    a worker whose replica stays away answers then, recorded once, rather than hold its pool's thread until
    the outage deadline (five minutes by default; 25 s here)."""
    from castor.fleet.workers._scripts import StepScripts

    from castor.fleet.wire import Job

    primary_url, _, link, _ = pair
    scripts = StepScripts(primary_url, "w", replicas=1, replica_timeout=0.3, outage=25)
    direct = redis.Redis.from_url(primary_url)
    job = Job("r", 0, "lookup", {}, reply_to="w:replies", token="signed-task")
    answered, recorded = _answering(scripts, direct, job, answer)
    try:
        assert scripts.claim(job) == -1
        link.lag()
        with ThreadPoolExecutor(1) as pool:
            answering = pool.submit(answered, time.monotonic() + 1.5)
            assert answering.result(12) is True, "waited past the call's deadline"
        assert direct.xlen("w:replies") == 1  # answered once, the replica still away
        assert recorded() == 1
    finally:
        link.catch_up()
        scripts.close()
        direct.close()


@pytest.mark.fleet  # a primary and a replica of their own
def test_an_answer_served_from_another_workers_record_waits_for_the_replica_too(
    pair: tuple[str, str, ReplicationLink, subprocess.Popen[bytes]],
) -> None:
    """A second delivery of a call (its coordinator took the run over) finds the step journaled by the first
    worker, which may still be waiting for the replica to have the record: it answers from the record only
    once the replica has it, as that worker does."""
    import secrets

    from castor.fleet.workers._scripts import Delivery
    from castor.fleet.workers.runtime import WorkerRuntime

    from castor.backends.redis import redis_backend
    from castor.checkpoint import new_record
    from castor.fleet.wire import OK, encode, task_name
    from castor.registry import ToolRegistry
    from castor.seams import ToolCall

    primary_url, _, link, _ = pair
    secret = secrets.token_hex(32)
    settings = Settings(redis={"url": primary_url, "prefix": "w", "replicas": 1, "replica_timeout": 0.5},
                        security={"secret": secret})
    runtime = WorkerRuntime(settings, ToolRegistry([lookup]))
    direct = redis.Redis.from_url(primary_url)

    async def journal_it() -> None:
        backend = redis_backend(primary_url, prefix="w")
        try:
            await backend.journal.append("r", 0, new_record({"tool_name": "lookup", "arguments": {"order": "7"}},
                                                            "order 7"))
        finally:
            await backend.close()

    try:
        link.lag()
        asyncio.run(journal_it())  # the first worker's record, on the primary only
        arguments = {"order": "7"}
        replies = keys.reply_stream("w", "co-1")
        kwargs = encode(ToolCall("r", 0, "lookup", arguments, checked=arguments), replies, secret)
        with ThreadPoolExecutor(1) as pool:
            handling = pool.submit(runtime.handle, kwargs, task_name("lookup"), 0, Delivery("t-2/0"))
            time.sleep(1.6)  # its waits for the replica
            assert direct.xlen(replies) == 0, "answered from a record the replica did not have"
            link.catch_up()
            outcome = handling.result(15)
        assert outcome.status == OK and "journaled already" in outcome.detail, outcome
        assert direct.xlen(replies) == 1
    finally:
        runtime.close()
        direct.close()


@pytest.mark.fleet  # a primary and a replica of their own
async def test_a_submission_the_replica_does_not_have_is_not_said_done(
    pair: tuple[str, str, ReplicationLink, subprocess.Popen[bytes]],
) -> None:
    """``castor submit`` stores and queues a run in one transaction; said submitted, it must survive a failover
    as a claim does: with ``replicas=1`` a submission the replica did not acknowledge is an error saying so."""
    from castor.backends.redis import redis_backend
    from castor.checkpoint import AgentCheckpoint

    def run(pid: str) -> AgentCheckpoint:
        return AgentCheckpoint(pid=pid, status="RUNNING", agent_function_name="a", capabilities={})

    primary_url, replica_url, link, _ = pair
    backend = redis_backend(primary_url, prefix="sub", replicas=1, replica_timeout=2)
    replica = redis.Redis.from_url(replica_url, decode_responses=True)
    try:
        runs: Any = backend.runs
        await runs.create_submitted(run("kept"))
        assert replica.lrange(keys.run_queue("sub"), 0, -1) == ["kept"]  # there already: what WAIT promised
        link.lag()
        with pytest.raises(BackendUnavailable) as refused:
            await runs.create_submitted(run("late"))
        assert str(refused.value).startswith(
            "run 'late' is stored and queued on the primary: 0 of the 1 Redis replica(s) asked for"
        ), refused.value
    finally:
        replica.close()
        await backend.close()
