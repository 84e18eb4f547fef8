"""The gateway in process: the MCP SDK's own client against the gateway's server, on a SQLite store that a
second backend (standing in for ``castor approve`` in another process) reads and decides on."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from castor.backends import open_backend
from castor.errors import ConfigError
from castor.kernel import Castor
from castor.kernel.approvals import OUTCOMES
from castor.mcp.gateway import Gateway
from castor.mcp.server import build_server
from castor.mcp.session import Options
from castor.seams import Backend, Decision
from tests.mcp.mcp_tools import add, append_line, explode, lines, tag

TOOLS = [add, append_line, tag, explode]


def gateway(db: str, *, budgets: dict[str, float] | None = None, pid: str | None = "session-1",
            client_may_decide: bool = False, **options: Any) -> Gateway:
    """A gateway over the test tools on ``db``; a call waits at most 10 s for a human unless told."""
    kernel = Castor(tools=TOOLS, destructive=["append_line"], store=db, structured_results=True)
    opts = Options(budgets=budgets, approval_timeout=options.pop("approval_timeout", 10.0),
                   progress_every=0.05, **options)
    return Gateway(kernel, opts, default_pid=pid, client_may_decide=client_may_decide)


async def decide_when_waiting(backend: Backend, pid: str, outcome: str, reason: str = "") -> None:
    """The human: wait for the call to show up pending, then decide it."""
    for _ in range(400):
        waiting = await backend.approvals.pending(pid)
        if waiting:
            decision = Decision(run_id=pid, step=waiting[0].step, outcome=OUTCOMES[outcome], by="alice", at=0.0,
                                reason=reason)
            await backend.approvals.decide(decision)
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"no call of {pid} ever waited for a decision")


def text(result: Any) -> str:
    return "".join(part.text for part in result.content)


async def test_list_tools_shows_castor_schemas_and_destructive_hint(db: str) -> None:
    gw = gateway(db)
    async with Client(build_server(gw)) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == {"add", "append_line", "tag", "explode", "castor_status"}
    for name in ("add", "append_line", "tag"):
        assert tools[name].input_schema == gw.kernel.tools.get(name).schema.json_schema()
    assert tools["add"].input_schema["required"] == ["a", "b"]
    assert tools["add"].input_schema["properties"]["a"]["type"] == "integer"
    assert tools["tag"].input_schema["properties"]["labels"]["anyOf"][0]["type"] == "array"
    assert tools["append_line"].annotations.destructive_hint is True
    assert "waits for a human" in str(tools["append_line"].description)
    assert tools["add"].annotations.destructive_hint is False
    assert tools["add"].description.startswith("Add two integers.")
    await gw.close()


async def test_safe_call_is_journaled_in_the_sessions_run(db: str, operator: Backend) -> None:
    gw = gateway(db, budgets={"api": 5})
    async with Client(build_server(gw)) as client:
        result = await client.call_tool("add", {"a": 2, "b": 3})
        status = json.loads(text(await client.call_tool("castor_status", {})))
        instructions = client.instructions
    assert result.is_error is False and text(result) == "5"
    assert result.meta is not None and result.meta["castor/run"] == "session-1"
    assert status["pid"] == "session-1" and status["budgets"]["api"]["left"] == 4
    assert "This connection's Castor run is session-1." in str(instructions)
    await gw.close()
    journal = await operator.journal.history("session-1")
    assert [r.request["tool_name"] for r in journal] == ["add"] and journal[0].response == 5


async def test_malformed_argument_is_an_error_naming_it(db: str, log: Path) -> None:
    gw = gateway(db)
    async with Client(build_server(gw)) as client:
        result = await client.call_tool("add", {"a": "seven", "b": 3})
        unknown = await client.call_tool("add", {"a": 1, "b": 2, "c": 3})
    assert result.is_error is True
    assert "a: Input should be a valid integer" in text(result)
    assert text(result).count("invalid arguments") == 1, text(result)  # said once, not by two layers
    assert unknown.is_error is True and "c: Extra inputs are not permitted" in text(unknown)
    await gw.close()


async def test_destructive_call_waits_with_progress_then_runs_once_approved(
    db: str, log: Path, operator: Backend
) -> None:
    gw = gateway(db)
    seen: list[str] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append(str(message))

    async with Client(build_server(gw)) as client:
        human = asyncio.create_task(decide_when_waiting(operator, "session-1", "approve"))
        result = await client.call_tool("append_line", {"text": "one"}, progress_callback=progress)
        await human
    assert result.is_error is False and text(result) == "appended one"
    assert lines(log) == 1
    assert seen and "castor approve session-1" in seen[0]
    record = (await operator.journal.history("session-1"))[0]
    assert record.was_hitl and record.decided_by == "alice"
    await gw.close()


async def test_rejected_call_is_an_error_with_the_reason_and_never_runs(
    db: str, log: Path, operator: Backend
) -> None:
    gw = gateway(db)
    async with Client(build_server(gw)) as client:
        human = asyncio.create_task(decide_when_waiting(operator, "session-1", "reject", "not today"))
        result = await client.call_tool("append_line", {"text": "no"})
        await human
        after = await client.call_tool("add", {"a": 1, "b": 1})
    assert result.is_error is True and "rejected by a human: not today" in text(result)
    assert lines(log) == 0
    assert text(after) == "2"  # the session goes on after a rejection
    await gw.close()


async def test_exhausted_budget_names_the_resource_and_what_is_left(db: str) -> None:
    gw = gateway(db, budgets={"api": 2})
    async with Client(build_server(gw)) as client:
        for _ in range(2):
            assert text(await client.call_tool("add", {"a": 1, "b": 1})) == "2"
        denied = await client.call_tool("add", {"a": 1, "b": 1})
    assert denied.is_error is True
    assert "budget exhausted for 'api'" in text(denied) and "0 left" in text(denied)
    assert denied.meta is not None and denied.meta["castor/status"] == "INSUFFICIENT_CAPABILITY"
    await gw.close()


async def test_no_decision_in_time_leaves_the_call_waiting(db: str, log: Path, operator: Backend) -> None:
    gw = gateway(db, approval_timeout=0.3)
    async with Client(build_server(gw)) as client:
        result = await client.call_tool("append_line", {"text": "late"})
    assert result.is_error is True and "no decision on append_line" in text(result)
    assert [p.tool_name for p in await operator.approvals.pending("session-1")] == ["append_line"]
    assert lines(log) == 0
    await gw.close()


async def test_restart_mid_wait_runs_the_decided_call_once(db: str, log: Path, operator: Backend) -> None:
    """The gateway stops while the call waits; the human approves while it is down; a new gateway on the same
    store gets the client's retry (same run, same idempotency key): the call runs once, and a second retry
    is answered from the journal."""
    meta = {"castor/run": "client-run", "castor/idempotency_key": "k-1"}
    first = gateway(db, pid=None, approval_timeout=0.2)
    async with Client(build_server(first)) as client:
        first_key = meta | {"castor/idempotency_key": "k-0"}
        assert text(await client.call_tool("add", {"a": 1, "b": 1}, meta=first_key)) == "2"
        waited = await client.call_tool("append_line", {"text": "once"}, meta=meta)
    assert waited.is_error is True
    await first.close()  # the gateway goes down
    await decide_when_waiting(operator, "client-run", "approve")
    assert lines(log) == 0
    second = gateway(db, pid=None)
    async with Client(build_server(second)) as client:
        retried = await client.call_tool("append_line", {"text": "once"}, meta=meta)
        again = await client.call_tool("append_line", {"text": "once"}, meta=meta)
    await second.close()
    third = gateway(db, pid=None)
    async with Client(build_server(third)) as client:
        after_restart = await client.call_tool("append_line", {"text": "once"}, meta=meta)
    await third.close()
    fourth = gateway(db, pid=None)
    async with Client(build_server(fourth)) as client:
        misused = await client.call_tool("append_line", {"text": "other"}, meta=meta)
    await fourth.close()
    assert misused.is_error and "idempotency key 'k-1' was given to another call" in text(misused)
    assert [text(r) for r in (retried, again, after_restart)] == ["appended once"] * 3
    assert lines(log) == 1
    assert [r.request["tool_name"] for r in await operator.journal.history("client-run")] == ["add", "append_line"]


async def test_a_decision_answers_only_the_call_it_was_asked_for(db: str, log: Path, operator: Backend) -> None:
    meta = {"castor/run": "swap"}
    gw = gateway(db, pid=None, approval_timeout=0.2)
    async with Client(build_server(gw)) as client:
        await client.call_tool("append_line", {"text": "harmless"}, meta=meta)
        await decide_when_waiting(operator, "swap", "approve")
        swapped = await client.call_tool("append_line", {"text": "something else"}, meta=meta)
        asked = await client.call_tool("append_line", {"text": "harmless"}, meta=meta)
    assert swapped.is_error is True and "waits for a decision on append_line" in text(swapped)
    assert text(asked) == "appended harmless"
    assert log.read_text() == "harmless\n"
    await gw.close()


async def test_speculative_runs_destructive_calls_flagged_for_scan(db: str, log: Path) -> None:
    gw = gateway(db, speculative=True)
    async with Client(build_server(gw)) as client:
        result = await client.call_tool("append_line", {"text": "fast"})
    assert result.is_error is False and result.meta is not None and result.meta["castor/needs_review"] is True
    await gw.close()
    kernel = Castor(tools=TOOLS, store=db)
    summary = kernel.scan(await kernel.aload("session-1"))
    assert summary.flagged_count == 1 and lines(log) == 1
    await kernel.close()


async def test_the_client_cannot_decide_unless_the_operator_allows_it(db: str, log: Path) -> None:
    guarded = gateway(db, approval_timeout=0.2)
    async with Client(build_server(guarded)) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        refused = await client.call_tool("castor_decide", {"decision": "approve"})
    assert not any("approve" in n or "decide" in n or "reject" in n for n in names)
    assert refused.is_error is True and "unknown tool" in text(refused)
    await guarded.close()
    dev = gateway(db, pid="dev-run", client_may_decide=True, approval_timeout=5.0)
    async with Client(build_server(dev)) as client:
        assert "castor_decide" in {tool.name for tool in (await client.list_tools()).tools}
        call = asyncio.create_task(client.call_tool("append_line", {"text": "self-approved"}))
        await _until(lambda: dev.sessions.get("dev-run") is not None and dev.sessions["dev-run"].drive is None)
        said = await client.call_tool("castor_decide", {"decision": "approve"})
        assert "approve recorded" in text(said)
        assert text(await call) == "appended self-approved"
    await dev.close()


async def test_the_gateways_decide_refuses_on_its_own_without_the_operators_leave(
    db: str, log: Path, operator: Backend
) -> None:
    """``Gateway.decide`` is the second lock behind the unlisted tool: called by any other path of a gateway
    started without ``--client-may-decide``, it records nothing and the call still waits for a human."""
    guarded = gateway(db, approval_timeout=0.2)
    async with Client(build_server(guarded)) as client:
        waited = await client.call_tool("append_line", {"text": "not by the model"})
    assert waited.is_error is True
    with pytest.raises(ConfigError, match="may not decide its own calls"):
        await guarded.decide("session-1", "approve", "")
    await guarded.close()
    assert [p.tool_name for p in await operator.approvals.pending("session-1")] == ["append_line"]
    assert lines(log) == 0


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(400):
        if check():
            return
        await asyncio.sleep(0.025)
    raise AssertionError("condition never held")


async def test_a_tool_that_raises_is_an_error_and_the_session_goes_on(db: str, operator: Backend) -> None:
    gw = gateway(db, budgets={"api": 10})
    async with Client(build_server(gw)) as client:
        failed = await client.call_tool("explode", {"reason": "disk full"})
        after = await client.call_tool("add", {"a": 2, "b": 2})
    await gw.close()
    again = gateway(db)  # a gateway started again replays the journal: it must hold no gap
    async with Client(build_server(again)) as client:
        resumed = await client.call_tool("add", {"a": 3, "b": 3})
        status = json.loads(text(await client.call_tool("castor_status", {})))
    await again.close()
    assert failed.is_error and "RuntimeError: exploded: disk full" in text(failed)
    assert (text(after), text(resumed)) == ("4", "6")
    history = await operator.journal.history("session-1")
    assert [(r.request["tool_name"], r.response) for r in history] == [("add", 4), ("add", 6)]
    assert status["budgets"]["api"]["used"] == 2  # the failed call was refunded


async def test_sessions_draw_from_a_shared_scope(db: str, operator: Backend) -> None:
    await operator.budgets.set_scope("team-mcp", {"api": 1})
    first, second = gateway(db, pid="one", scopes=("team-mcp",)), gateway(db, pid="two", scopes=("team-mcp",))
    async with Client(build_server(first)) as one, Client(build_server(second)) as two:
        assert text(await one.call_tool("add", {"a": 1, "b": 1})) == "2"
        denied = await two.call_tool("add", {"a": 1, "b": 1})
    assert denied.is_error and "budget exhausted for 'team-mcp:api'" in text(denied)
    await first.close()
    await second.close()


async def test_a_bad_run_name_is_an_error_result(db: str) -> None:
    gw = gateway(db, pid=None)
    async with Client(build_server(gw)) as client:
        bad = await client.call_tool("add", {"a": 1, "b": 1}, meta={"castor/run": "no spaces allowed"})
    assert bad.is_error and "InvalidPidError" in text(bad) and "no spaces allowed" in text(bad)
    await gw.close()


async def test_an_idle_session_lets_go_of_its_run_and_picks_it_up_again(db: str, operator: Backend) -> None:
    gw = gateway(db, pid=None, idle_after=0.0)
    async with Client(build_server(gw)) as client:
        assert text(await client.call_tool("add", {"a": 1, "b": 1}, meta={"castor/run": "idle"})) == "2"
        await client.call_tool("add", {"a": 1, "b": 1}, meta={"castor/run": "busy"})  # sweeps "idle"
        assert "idle" not in gw.sessions
        header = await operator.runs.load("idle")
        assert header is not None and header.status == "PREEMPTED"
        assert text(await client.call_tool("add", {"a": 2, "b": 2}, meta={"castor/run": "idle"})) == "4"
    await gw.close()
    assert [r.response for r in await operator.journal.history("idle")] == [2, 4]


async def test_a_key_whose_call_failed_names_no_step(db: str, operator: Backend) -> None:
    meta = {"castor/idempotency_key": "k-fail"}
    gw = gateway(db)
    async with Client(build_server(gw)) as client:
        failed = await client.call_tool("explode", {"reason": "once"}, meta=meta)
        other = await client.call_tool("add", {"a": 1, "b": 1})  # takes the step the failed call left
        retried = await client.call_tool("explode", {"reason": "once"}, meta=meta)
    await gw.close()
    assert failed.is_error and text(other) == "2"
    assert retried.is_error and "exploded: once" in text(retried)  # run again, not "given to another call"


async def test_on_a_redis_store_the_decision_comes_from_another_backend(
    redis_url: str, redis_prefix: str, log: Path
) -> None:
    store = f"{redis_url}?prefix={redis_prefix}"
    gw = gateway(store)
    human = open_backend(store)
    try:
        async with Client(build_server(gw)) as client:
            deciding = asyncio.create_task(decide_when_waiting(human, "session-1", "approve"))
            result = await client.call_tool("append_line", {"text": "shared"})
            await deciding
        assert text(result) == "appended shared" and lines(log) == 1
        assert [r.decided_by for r in await human.journal.history("session-1")] == ["alice"]
    finally:
        await gw.close()
        await human.close()


async def test_a_client_cannot_drive_another_agents_run(db: str, log: Path, operator: Backend) -> None:
    """A client names its run (``_meta["castor/run"]``); a run of another agent in the same store, waiting,
    finished or failed, is refused: not reopened, no call of the client's journaled in it, none of its
    recorded results or its status answered."""
    from castor.lib import tool

    async def victim(fail: bool = False) -> str:
        await tool("add", a=1, b=2)
        if fail:
            raise RuntimeError("the agent gave up")
        await tool("append_line", text="victim's own")
        return "done"

    async def failing() -> str:
        return await victim(fail=True)

    owner = Castor(tools=TOOLS, destructive=["append_line"], store=db)
    waiting = await owner.run(victim, pid="waits")
    with contextlib.suppress(RuntimeError):
        await owner.run(failing, pid="failed")
    await owner.approve(waiting)
    await owner.run(victim, checkpoint=waiting)  # completed
    await owner.run(victim, pid="waits-too")
    await owner.close()
    before = {pid: ((await operator.runs.load(pid)).status, len(await operator.journal.history(pid)))
              for pid in ("waits", "failed", "waits-too")}
    assert [status for status, _ in before.values()] == ["COMPLETED", "FAILED", "SUSPENDED_FOR_HITL"]
    gw = gateway(db, pid=None, client_may_decide=True)  # even a development gateway's client decides its own
    async with Client(build_server(gw)) as client:
        for pid in before:
            for name, arguments in (("add", {"a": 1, "b": 2}), ("append_line", {"text": "evil"}),
                                    ("castor_status", {}), ("castor_decide", {"decision": "approve", "run": pid})):
                result = await client.call_tool(name, arguments, meta={"castor/run": pid})
                assert result.is_error and f"run {pid!r} is not an MCP session's run" in text(result), text(result)
    await gw.close()
    after = {pid: ((await operator.runs.load(pid)).status, len(await operator.journal.history(pid))) for pid in before}
    assert after == before
    assert await operator.approvals.decision("waits-too", 1) is None  # still waits for a human
    assert lines(log) == 1  # the owner's approved call only


def _losing_its_record_once(gw: Gateway) -> None:
    """The store refuses the first ``append_line`` record once the tool ran (the disk full, Redis gone for a
    moment)."""
    from castor.errors import BackendUnavailable

    append, refused = gw.kernel.backend.journal.append, []

    async def away_once(run_id: str, step: int, record: Any) -> None:
        if record.tool_name == "append_line" and not refused:
            refused.append(step)
            raise BackendUnavailable("the disk is full")
        await append(run_id, step, record)

    gw.kernel.backend.journal.append = away_once  # type: ignore[method-assign]


async def test_a_call_whose_record_the_store_lost_is_an_error_and_its_retry_is_in_doubt(
    db: str, log: Path, operator: Backend
) -> None:
    """The client is told the outcome is unknown and the run stops resumable. The destructive call's claim
    stays: its retry finds it in doubt and waits for a human (never run again by itself); decided, the
    session goes on."""
    gw = gateway(db, speculative=True)
    _losing_its_record_once(gw)
    async with Client(build_server(gw)) as client:
        lost = await client.call_tool("append_line", {"text": "once"})
        human = asyncio.create_task(decide_when_waiting(operator, "session-1", "reject", "it ran: leave it"))
        retried = await client.call_tool("append_line", {"text": "once"})
        await human
        after = await client.call_tool("add", {"a": 2, "b": 2})
    await gw.close()
    assert lost.is_error and "OutcomeUnknownError" in text(lost) and "the disk is full" in text(lost)
    assert retried.is_error and "it ran: leave it" in text(retried)
    assert text(after) == "4"
    assert log.read_text().splitlines() == ["once"]  # it ran once
    assert [r.request["tool_name"] for r in await operator.journal.history("session-1")] == ["append_line", "add"]


async def test_a_call_whose_outcome_is_unknown_keeps_its_step_from_another_call(
    db: str, log: Path, operator: Backend
) -> None:
    """Another call after the lost one is refused, naming the call to retry: had it taken the lost call's
    step, the lost call would be journaled nowhere, and its retry, a new step, would ask a human to approve
    it as if it had never run (or, speculative, run it again)."""
    gw = gateway(db, speculative=True)
    _losing_its_record_once(gw)
    async with Client(build_server(gw)) as client:
        lost = await client.call_tool("append_line", {"text": "once"})
        other = await client.call_tool("add", {"a": 2, "b": 2})
        human = asyncio.create_task(decide_when_waiting(operator, "session-1", "reject", "it ran"))
        retried = await client.call_tool("append_line", {"text": "once"})
        await human
    await gw.close()
    assert lost.is_error and "OutcomeUnknownError" in text(lost)
    assert other.is_error and "append_line" in text(other) and "step 0" in text(other), text(other)
    assert retried.is_error and "it ran" in text(retried)
    assert log.read_text().splitlines() == ["once"]  # never run again
    assert [r.request["tool_name"] for r in await operator.journal.history("session-1")] == ["append_line"]


async def test_a_gateway_started_again_keeps_the_step_of_a_call_whose_outcome_is_unknown(
    db: str, log: Path, operator: Backend
) -> None:
    """The step is kept on the run's header too (its tool, never its arguments): a gateway started again
    refuses another call at it, and the lost call's retry waits for a human."""
    first = gateway(db, speculative=True)
    _losing_its_record_once(first)
    async with Client(build_server(first)) as client:
        lost = await client.call_tool("append_line", {"text": "once"})
    await first.close()
    again = gateway(db, speculative=True)
    async with Client(build_server(again)) as client:
        other = await client.call_tool("add", {"a": 2, "b": 2})
        human = asyncio.create_task(decide_when_waiting(operator, "session-1", "reject", "it ran"))
        retried = await client.call_tool("append_line", {"text": "once"})
        await human
        after = await client.call_tool("add", {"a": 2, "b": 2})
    await again.close()
    assert lost.is_error and "OutcomeUnknownError" in text(lost)
    assert other.is_error and "holds append_line" in text(other), text(other)
    assert retried.is_error and "it ran" in text(retried)
    assert text(after) == "4"
    assert log.read_text().splitlines() == ["once"]
    header = await operator.runs.load("session-1")
    assert header is not None and "once" not in json.dumps(header.context_history)  # no argument kept
