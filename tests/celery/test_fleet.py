"""Real worker processes, real Redis: routing, approvals from another process, refusals, deadlines."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
import uuid
from typing import Any

import pytest

import castor.lib as lib
from castor import Castor, RemoteToolError, ToolTimeoutError
from castor.backends.redis import keys
from castor.executors.celery import CeleryExecutor, fleet_options
from castor.fleet.wire import encode
from castor.seams import Decision, ToolCall

from .checks import dead_letters
from .conftest import ROOT, Fleet


async def test_calls_land_on_both_pools(fleet: Fleet, kernel: Castor) -> None:
    async def agent() -> list[object]:
        found = await lib.tool("search", query="castor")
        short = await lib.tool("summarize", text="a long text to summarize")
        note = await lib.tool("write_note", name=f"n-{uuid.uuid4().hex[:6]}", content="secret body")
        return [found, short, note]

    cp = await kernel.run(agent)
    assert cp.status == "COMPLETED", cp.error
    found, short, note = cp.result
    assert found == {"query": "castor", "pool": "web"}
    assert short == {"summary": "a long tex", "pool": "web"}
    assert note["pool"] == "fs"
    # The workers journaled the records: the store holds them, write-once, with the request.
    history = await kernel.backend.journal.history(cp.pid)
    assert [r.tool_name for r in history] == ["search", "summarize", "write_note"]
    assert history[0].response == found
    # (What a worker logs of a task's arguments is redacted: test_duplicates, and the refusals below.)


async def test_replayed_steps_never_leave_the_coordinator(fleet: Fleet, kernel: Castor) -> None:
    tag = f"r-{uuid.uuid4().hex[:6]}"

    async def agent() -> object:
        return await lib.tool("write_note", name=tag, content="x")

    cp = await kernel.run(agent)
    assert cp.status == "COMPLETED"
    cp.status = "RUNNING"
    again = await kernel.run(agent, checkpoint=cp)
    assert again.status == "COMPLETED"
    assert fleet.count(tag, "done") == 1
    # Not even sent: a dispatched replay would show as a second task received by the pool (its worker
    # would then answer it from the journal, so the count above alone cannot tell).
    assert len(_received(fleet, "fs", cp.pid)) == 1


async def test_destructive_call_approved_from_another_process(fleet: Fleet, kernel: Castor) -> None:
    path = f"/tmp/castor-{uuid.uuid4().hex[:6]}"

    async def agent() -> object:
        return await lib.tool("delete_file", path=path)

    cp = await kernel.run(agent)
    assert cp.status == "SUSPENDED_FOR_HITL"
    assert fleet.count(path, "done") == 0
    approver = textwrap.dedent(f"""
        import asyncio
        from castor import Castor
        from castor.executors.celery import fleet_options
        from castor.settings import load_settings

        async def main():
            kernel = Castor(**fleet_options(load_settings({str(fleet.config)!r}), budgets={{}}))
            try:
                await kernel.decide({cp.pid!r}, "approve", by="alice")
            finally:
                await kernel.close()

        asyncio.run(main())
    """)
    done = subprocess.run([sys.executable, "-c", approver], cwd=ROOT, env=fleet.env, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert fleet.count(path, "done") == 1
    resumed = await kernel.run(agent, checkpoint=await kernel.aload(cp.pid))
    assert resumed.status == "COMPLETED"
    assert resumed.result == f"deleted {path}"
    assert resumed.syscall_log[0].decided_by == "alice"
    assert fleet.count(path, "done") == 1  # served from the journal on resume


async def test_killed_worker_during_idempotent_call_completes_once(fleet: Fleet, kernel: Castor) -> None:
    tag = f"copy-{uuid.uuid4().hex[:6]}"

    async def agent() -> object:
        return await lib.tool("slow_copy", tag=tag, seconds=1.0)

    task = asyncio.create_task(kernel.run(agent))
    pid = await asyncio.to_thread(fleet.running_pid, tag)
    _kill(pid)
    cp = await asyncio.wait_for(task, 30)
    assert cp.status == "COMPLETED", cp.error
    assert cp.result == f"copied {tag}"
    assert fleet.count(tag, "start") == 2  # the killed run, then the redelivered one
    assert fleet.count(tag, "done") == 1
    assert len(await kernel.backend.journal.history(cp.pid)) == 1


async def test_killed_worker_during_destructive_call_goes_back_to_a_human(fleet: Fleet, kernel: Castor) -> None:
    tag = f"rm-{uuid.uuid4().hex[:6]}"

    async def agent() -> object:
        return await lib.tool("slow_remove", tag=tag, seconds=1.0)

    cp = await kernel.run(agent)
    assert cp.status == "SUSPENDED_FOR_HITL"
    deciding = asyncio.create_task(kernel.decide(cp, "approve", by="bob"))
    pid = await asyncio.to_thread(fleet.running_pid, tag)
    _kill(pid)
    cp = await asyncio.wait_for(deciding, 30)
    # Redelivered, the task found the step started and unfinished: never run blindly a second time.
    assert cp.status == "SUSPENDED_FOR_HITL"
    assert cp.pending_reason == "in doubt: started and never finished"
    assert fleet.count(tag, "start") == 1
    assert fleet.count(tag, "done") == 0
    pending = await kernel.backend.approvals.pending(cp.pid)
    assert [(p.step, p.attempt, p.reason) for p in pending] == [(0, 1, "in doubt: started and never finished")]
    failures = await kernel.backend.journal.failures(cp.pid)
    assert [f.error_type for f in failures] == ["InDoubtError"]
    # A new approval round: the human looked, and decides again.
    await kernel.decide(cp, "approve", by="carol")
    resumed = await kernel.run(agent, checkpoint=cp)
    assert resumed.status == "COMPLETED"
    assert resumed.result == f"removed {tag}"
    assert resumed.syscall_log[0].decided_by == "carol"
    assert fleet.count(tag, "done") == 1


async def test_forged_tasks_are_refused_and_dead_lettered(fleet: Fleet, kernel: Castor) -> None:
    # Unsigned (or wrongly signed) while the fleet has a secret: nothing is written into the run they name.
    from celery import Celery

    from castor.fleet.celery_config import celery_config

    forger = Celery("forger", set_as_current=False)
    forger.conf.update(celery_config(fleet.settings))
    queue = fleet.settings.queue_of("fs")
    run_id = f"forged-{uuid.uuid4().hex[:6]}"
    path = f"/tmp/forged-{uuid.uuid4().hex[:6]}"

    def task(step: int, tool: str, arguments: dict[str, object], token: str | None = None) -> dict[str, object]:
        return {**encode(ToolCall(run_id, step, tool, arguments), "", None), "token": token}

    before = fleet.redis.llen(keys.dead_letters(fleet.prefix, "fs"))
    forger.send_task("castor.tool.delete_file", kwargs=task(0, "delete_file", {"path": path}), queue=queue)
    forger.send_task("castor.tool.delete_file", kwargs=task(1, "delete_file", {"path": path}, "0" * 64), queue=queue)
    forger.send_task("castor.tool.write_note", kwargs=task(2, "write_note", {"name": path, "content": "x" * 5000}),
                     queue=queue)
    forger.send_task("castor.tool.rm_rf", kwargs=task(3, "rm_rf", {"path": "/"}), queue=queue)
    forger.send_task("castor.tool.write_note", kwargs=task(4, "write_note", {"name": path, "content": "x"}),
                     queue=queue)  # a plain tool, but unsigned while the fleet has a secret
    forger.send_task("castor.tool.write_note", kwargs=task(5, "write_note", {"name": path}), queue=queue)
    forger.close()
    letters = [d for d in await dead_letters(fleet, "fs", before + 6) if d["headers"].get("castor_run") == run_id]
    reasons = sorted((d["headers"]["castor_step"], d["reason"]) for d in letters)
    assert [r[0] for r in reasons] == list(range(6)), reasons
    assert "no authorization token for 'delete_file'" in reasons[0][1]  # a secret: approval or not, unsigned is refused
    assert "invalid authorization token" in reasons[1][1]
    assert "above the limit of 2048" in reasons[2][1]
    assert "unknown task 'castor.tool.rm_rf'" in reasons[3][1]
    assert "no authorization token for 'write_note'" in reasons[4][1]
    assert "malformed arguments for 'write_note'" in reasons[5][1]
    assert all(len(d["sha256"]) == 64 and d["size"] > 0 for d in letters)
    assert fleet.count(path, "done") == 0
    journal = kernel.backend.journal
    assert await journal.length(run_id) == 0
    assert await journal.failures(run_id) == []  # nothing written on behalf of an unauthenticated message
    assert "x" * 100 not in fleet.log("fs")  # arguments of a refusal are not logged


async def test_an_approval_does_not_authorize_other_arguments(fleet: Fleet, kernel: Castor) -> None:
    from celery import Celery

    from castor.fleet.celery_config import celery_config

    path, other = (f"/tmp/castor-{uuid.uuid4().hex[:6]}" for _ in range(2))

    async def agent() -> object:
        return await lib.tool("delete_file", path=path)

    cp = await kernel.run(agent)
    assert cp.status == "SUSPENDED_FOR_HITL"
    # Approved in the store, not yet run: the window in which a forged task could borrow the approval.
    await kernel.backend.approvals.decide(Decision(cp.pid, 0, "approve", "alice", time.time()))
    forger = Celery("forger", set_as_current=False)
    forger.conf.update(celery_config(fleet.settings))
    queue = fleet.settings.queue_of("fs")

    def unsigned(tool: str, arguments: dict[str, object]) -> None:
        kwargs = encode(ToolCall(cp.pid, 0, tool, arguments), "", None)
        forger.send_task(f"castor.tool.{tool}", kwargs=kwargs, queue=queue)

    before = fleet.redis.llen(keys.dead_letters(fleet.prefix, "fs"))
    unsigned("delete_file", {"path": other})
    unsigned("slow_remove", {"tag": other, "seconds": 0.0})  # another destructive tool at the approved step
    forger.close()
    journal = kernel.backend.journal
    letters = (await dead_letters(fleet, "fs", before + 2))[before:]
    reasons = sorted((d["headers"]["task"], d["reason"]) for d in letters)
    # With a secret only a signed task runs: the approval lends an unsigned one nothing (without a secret, in a
    # development fleet, the approved call's tool and arguments are checked: tests/celery/test_guard.py).
    assert reasons == [
        ("castor.tool.delete_file", f"no authorization token for 'delete_file' (run {cp.pid}, step 0)"),
        ("castor.tool.slow_remove", f"no authorization token for 'slow_remove' (run {cp.pid}, step 0)"),
    ], reasons
    assert await journal.failures(cp.pid) == []
    assert fleet.count(other, "done") == 0 and fleet.count(other, "start") == 0
    assert await journal.length(cp.pid) == 0
    # The approved call itself still runs, once.
    resumed = await kernel.run(agent, checkpoint=cp)
    assert resumed.status == "COMPLETED", resumed.error
    assert resumed.result == f"deleted {path}"
    assert resumed.syscall_log[0].decided_by == "alice"
    assert fleet.count(path, "done") == 1
    assert fleet.count(other, "done") == 0


async def test_malformed_message_is_refused_and_the_worker_survives(fleet: Fleet, kernel: Castor) -> None:
    queue = fleet.settings.queue_of("web")
    key = f"{fleet.settings.broker.queue_prefix}:{queue}"
    envelope = {
        "body": "eyJub3QganNvbg==",  # base64 of '{"not json'
        "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"id": "bad-1", "task": "castor.tool.search"},
        "properties": {"delivery_tag": uuid.uuid4().hex, "body_encoding": "base64",
                       "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0},
    }
    before = fleet.redis.llen(keys.dead_letters(fleet.prefix, "web"))
    fleet.redis.lpush(key, json.dumps(envelope))
    pickled = dict(envelope, **{"content-type": "application/x-python-serialize"})
    pickled["properties"] = dict(envelope["properties"], delivery_tag=uuid.uuid4().hex)
    fleet.redis.lpush(key, json.dumps(pickled))

    async def agent() -> object:
        return await lib.tool("search", query="still alive")

    cp = await kernel.run(agent)
    assert cp.status == "COMPLETED"
    assert fleet.workers["web"].poll() is None
    letters = [d for d in await dead_letters(fleet, "web", before + 2) if d["headers"].get("id") == "bad-1"]
    assert sorted(d["reason"] for d in letters) == [
        "cannot decode the body: DecodeError",
        "content type 'application/x-python-serialize' is not application/json",
    ]
    assert "refused message 'castor.tool.search' ['bad-1']" in fleet.log("web")


async def test_tool_timeout_is_journaled(fleet: Fleet, kernel: Castor) -> None:
    async def agent() -> object:
        return await lib.tool("stuck", seconds=30)

    started = time.monotonic()
    with pytest.raises(ToolTimeoutError, match="timed out after 1s"):
        await kernel.run(agent)
    # Cut at its deadline, long before the tool would end (with room for queueing on a loaded machine).
    assert time.monotonic() - started < 10
    cp = kernel.live[next(iter(kernel.live))]
    failures = await kernel.backend.journal.failures(cp.pid)
    assert [f.error_type for f in failures] == ["ToolTimeoutError"]


async def test_coordinator_deadline_when_no_worker_answers(fleet: Fleet) -> None:
    k = Castor(**fleet_options(
        fleet.settings, budgets={}, executor=CeleryExecutor.factory(fleet.settings, reply_grace=0.5)
    ))
    try:
        async def agent() -> object:
            return await lib.tool("noop")  # the default pool has no worker in this fleet

        with pytest.raises(ToolTimeoutError, match="is a worker of pool 'default' running"):
            await k.run(agent)
        pid = next(iter(k.live))
        failures = await k.backend.journal.failures(pid)
        assert [f.error_type for f in failures] == ["ToolTimeoutError"]
        assert "gave no result within" in failures[0].message
    finally:
        await k.close()


async def test_tool_exception_keeps_its_type_name(fleet: Fleet, kernel: Castor) -> None:
    async def agent() -> object:
        return await lib.tool("explode", message="boom")

    with pytest.raises(RemoteToolError) as info:
        await kernel.run(agent)
    assert (info.value.error_type, info.value.tool_message) == ("ValueError", "boom")
    pid = next(p for p, cp in kernel.live.items() if cp.status == "FAILED")
    failures = await kernel.backend.journal.failures(pid)
    assert [(f.error_type, f.message) for f in failures] == [("ValueError", "boom")]  # once, by the worker
    assert len(_received(fleet, "web", pid)) == 1  # not retryable: never sent again (a retry is a new message)


async def test_a_result_above_max_result_bytes_is_the_steps_failure_and_runs_no_more(
    fleet: Fleet, kernel: Castor
) -> None:
    """A tool that returns megabytes would put them in Redis twice (journal and reply stream). Above
    ``[tools] max_result_bytes`` the step fails, once: the tool is retryable, yet not run again, and a
    resume on another coordinator replays the failure."""
    tag = f"bulky-{uuid.uuid4().hex[:6]}"
    limit = fleet.settings.tools.max_result_bytes

    async def agent() -> object:
        small = await lib.tool("bulky", tag=f"{tag}-small", size=limit - 2)  # a JSON string: its quotes count
        try:
            await lib.tool("bulky", tag=tag, size=limit)
        except RemoteToolError as error:
            return [len(small), error.error_type, error.tool_message]
        return "kept"

    cp = await kernel.run(agent)
    assert cp.status == "COMPLETED", cp.error
    size, error_type, message = cp.result
    assert size == limit - 2 and error_type == "ToolResultTooLarge"
    assert f"returned {limit + 2:,} bytes of JSON, above [tools] max_result_bytes ({limit:,})" in message
    received = [line for line in fleet.log("web").splitlines() if f"[{cp.pid}:1#" in line and " received" in line]
    assert fleet.count(tag, "done") == 1 and len(received) == 1  # retryable, and not retried
    assert [f.error_type for f in await kernel.backend.journal.failures(cp.pid)] == ["ToolResultTooLarge"]
    # the call finished: a copy of the task redelivered after a lost worker finds it started (in doubt), not new
    assert fleet.redis.exists(keys.started_marker(fleet.prefix, cp.pid, 1))
    assert all(len(str(r.response)) < limit for r in cp.syscall_log[1:])  # the result is nowhere journaled
    replayed = await resumed_elsewhere(fleet, agent, cp.pid)  # finished: the stored run, as it ended
    assert replayed.result == cp.result and fleet.count(tag, "done") == 1


async def resumed_elsewhere(fleet: Fleet, agent: Any, pid: str) -> Any:
    """Run ``pid`` on another coordinator (its own kernel, the store shared) to its next stop."""
    other = Castor(**fleet_options(fleet.settings, budgets={}))
    try:
        return await other.run(agent, pid=pid)
    finally:
        await other.close()


async def test_a_worker_failure_the_agent_goes_past_is_journaled_and_nothing_after_it_runs_twice(
    fleet: Fleet, kernel: Castor
) -> None:
    """The worker journals the later steps itself: the coordinator journals the failed step in its place
    before them, so the run's journal has no hole and a resume (another coordinator) replays all of it."""
    tag = f"past-{uuid.uuid4().hex[:6]}"

    async def agent() -> list[object]:
        try:
            first: object = await lib.tool("explode", message="boom")
        except RemoteToolError as error:  # the agent takes the failure and goes on, as frameworks do
            first = f"caught {error.error_type}: {error.tool_message}"
        wrote = await lib.tool("slow_write", tag=tag, seconds=0)
        return [first, wrote, await lib.tool("delete_file", path=f"{tag}.log")]

    cp = await kernel.run(agent)
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_step == 2
    assert [r.tool_name for r in cp.syscall_log] == ["explode", "slow_write"]
    await kernel.approve(cp)
    done = await resumed_elsewhere(fleet, agent, cp.pid)
    assert done.status == "COMPLETED", done.error
    assert done.result == ["caught ValueError: boom", f"wrote {tag}", f"deleted {tag}.log"]
    assert (fleet.count(tag, "start"), fleet.count(tag, "done")) == (1, 1)  # slow_write ran once
    assert len(_received(fleet, "web", cp.pid)) == 1  # explode was sent once: its failure was replayed


async def test_a_call_that_finished_beside_one_that_waits_for_a_human_runs_once(fleet: Fleet, kernel: Castor) -> None:
    """Calls at once: the destructive one (step 0) waits for a human while the one beside it (step 1) runs
    on its worker and finishes. Its record waits behind step 0; the run keeps it when it suspends, and the
    resume on another coordinator serves it: the worker ran it once over the run's whole life."""
    tag = f"beside-{uuid.uuid4().hex[:6]}"

    async def agent() -> list[object]:
        return await lib.parallel(("delete_file", {"path": f"{tag}.log"}), ("slow_write", {"tag": tag, "seconds": 0}))

    cp = await kernel.run(agent)
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_step == 0
    assert (fleet.count(tag, "start"), fleet.count(tag, "done")) == (1, 1)
    assert list(cp.held) == [1]
    await kernel.approve(cp)
    done = await resumed_elsewhere(fleet, agent, cp.pid)
    assert done.status == "COMPLETED", done.error
    assert done.result == [f"deleted {tag}.log", f"wrote {tag}"]
    assert (fleet.count(tag, "start"), fleet.count(tag, "done")) == (1, 1)  # slow_write ran once
    assert [r.tool_name for r in done.syscall_log] == ["delete_file", "slow_write"]


async def test_retryable_tool_is_retried_with_backoff(fleet: Fleet, kernel: Castor) -> None:
    tag = f"flaky-{uuid.uuid4().hex[:6]}"

    async def agent() -> object:
        return await lib.tool("flaky", tag=tag)

    cp = await kernel.run(agent)
    assert cp.status == "COMPLETED", cp.error
    assert cp.result == "ok after 2 starts"
    assert len(_received(fleet, "web", cp.pid)) == 2  # the task, and its one retry
    retries = [line for line in fleet.log("web").splitlines() if f"'run_id': '{cp.pid}'" in line and " retry " in line]
    assert len(retries) == 1 and "retry 1 in 0.10s" in retries[0]  # after retry_backoff (0.1 s in this fleet)


def _received(fleet: Fleet, pool: str, pid: str) -> list[str]:
    """The worker log's lines of tasks of run ``pid`` received by ``pool``."""
    return [line for line in fleet.log(pool).splitlines() if f"[{pid}:0#" in line and " received" in line]


def _kill(pid: int) -> None:
    import os
    import signal

    os.kill(pid, signal.SIGKILL)
