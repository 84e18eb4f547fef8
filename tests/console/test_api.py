"""The console's JSON API over the ASGI app, on SQLite and on Redis: approvals, decisions recorded under
the signed-in name, roles, runs and their timelines, scopes, and the OpenAPI description."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from castor import Castor
from castor.checkpoint import AgentCheckpoint
from castor.lib import tool
from castor.seams import Backend
from tests.console.conftest import SECRET, Client, auth, cleanup


async def test_the_queue_lists_the_waiting_call_with_its_secret_hidden(
    client: Client, waiting: AgentCheckpoint
) -> None:
    reply = await client.http.get("/api/approvals", headers=auth("bob"))
    assert reply.status_code == 200
    [row] = reply.json()["approvals"]
    assert (row["pid"], row["step"], row["tool"]) == (waiting.pid, 1, "delete_file")
    assert row["arguments"] == {"path": "/tmp/old1", "token": "***"}
    assert row["budget"]["api"] == {"limit": 10.0, "used": 1.0, "left": 9.0}
    assert SECRET not in reply.text


async def test_an_approval_is_journaled_under_the_signed_in_name(
    client: Client, waiting: AgentCheckpoint, kernel: Castor
) -> None:
    reply = await client.http.post(f"/api/runs/{waiting.pid}/approve", json={}, headers=auth("alice"))
    assert reply.status_code == 200, reply.text
    assert (reply.json()["by"], reply.json()["outcome"], reply.json()["step"]) == ("alice", "approve", 1)
    assert (await client.http.get("/api/approvals", headers=auth("alice"))).json()["approvals"] == []
    again = await client.http.post(f"/api/runs/{waiting.pid}/approve", json={}, headers=auth("carol"))
    assert again.status_code == 409  # the first decision wins
    done = await kernel.run(cleanup, checkpoint=await kernel.aload(waiting.pid))
    assert done.status == "COMPLETED"
    assert done.syscall_log[1].was_hitl and done.syscall_log[1].decided_by == "alice"


async def test_a_rejection_needs_a_reason_and_the_agent_receives_it(
    client: Client, waiting: AgentCheckpoint, kernel: Castor
) -> None:
    empty = await client.http.post(f"/api/runs/{waiting.pid}/reject", json={}, headers=auth("alice"))
    assert empty.status_code == 400 and "reason" in empty.json()["error"]
    reply = await client.http.post(f"/api/runs/{waiting.pid}/reject", json={"reason": "not today"},
                                   headers=auth("alice"))
    assert reply.status_code == 200
    done = await kernel.run(cleanup, checkpoint=await kernel.aload(waiting.pid))
    response = done.syscall_log[1].response
    assert response["status"] == "HITL_REJECTED" and "not today" in str(response)


@pytest.mark.parametrize(("who", "body", "status"), [
    ("bob", {}, 403),  # a viewer sees, never decides
    ("dave", {}, 403),  # an approver of other tools only
    ("alice", {"by": "carol"}, 403),  # nobody decides in another's name
])
async def test_who_may_not_decide(client: Client, waiting: AgentCheckpoint, who: str, body: dict[str, Any],
                                  status: int) -> None:
    reply = await client.http.post(f"/api/runs/{waiting.pid}/approve", json=body, headers=auth(who))
    assert reply.status_code == status, reply.text
    assert len((await client.http.get("/api/approvals", headers=auth("bob"))).json()["approvals"]) == 1


async def test_requests_without_a_good_token_or_json_are_refused(client: Client, waiting: AgentCheckpoint) -> None:
    assert (await client.http.get("/api/approvals")).status_code == 401
    assert (await client.http.get("/api/approvals", headers={"Authorization": "Bearer nope"})).status_code == 401
    assert (await client.http.get("/api/approvals", headers={"Authorization": "Basic x"})).status_code == 401
    form = await client.http.post(f"/api/runs/{waiting.pid}/approve", data={"x": "1"}, headers=auth("alice"))
    assert form.status_code == 415  # a cross-site form cannot send JSON: no decision without it
    missing = await client.http.post("/api/runs/no-such-run/approve", headers=auth("alice"))
    assert missing.status_code == 404  # a program's bare POST (no body) is judged, not refused for its type


async def test_runs_and_a_timeline(client: Client, waiting: AgentCheckpoint) -> None:
    listed = (await client.http.get("/api/runs?status=hitl", headers=auth("bob"))).json()["runs"]
    assert [r["pid"] for r in listed] == [waiting.pid]
    assert listed[0]["steps"] == 1 and listed[0]["pending_tool"] == "delete_file"
    assert (await client.http.get("/api/runs?status=done", headers=auth("bob"))).json()["runs"] == []
    assert (await client.http.get("/api/runs?status=nope", headers=auth("bob"))).status_code == 400
    run = (await client.http.get(f"/api/runs/{waiting.pid}", headers=auth("bob"))).json()
    assert [(s["step"], s["tool"], s["kinds"]) for s in run["timeline"]] == [(0, "search", ["live"])]
    assert run["timeline"][0]["charged"] == {"api": 1.0}
    assert run["pending"]["tool"] == "delete_file" and run["pending"]["arguments"]["token"] == "***"
    missing = await client.http.get("/api/runs/no-such-run", headers=auth("bob"))
    assert missing.status_code == 404 and missing.json()["error"].endswith("'no-such-run'")
    # The command that applies a decision names the store whole: on Redis its key prefix too (it said
    # --store redis://host/db, and that found no run).
    fleet = client.state.console.fleet
    expected = f"?prefix={fleet.prefix}" if fleet is not None else " --db "
    assert run["resume"].startswith(f"castor resume {waiting.pid} ") and expected in run["resume"], run["resume"]


async def test_a_decided_step_shows_who_decided(client: Client, waiting: AgentCheckpoint, kernel: Castor) -> None:
    await client.http.post(f"/api/runs/{waiting.pid}/approve", json={}, headers=auth("alice"))
    await kernel.run(cleanup, checkpoint=await kernel.aload(waiting.pid))
    run = (await client.http.get(f"/api/runs/{waiting.pid}", headers=auth("bob"))).json()
    step = run["timeline"][1]
    assert step["kinds"] == ["live", "human"] and (step["outcome"], step["decided_by"]) == ("approved", "alice")
    assert step["arguments"]["token"] == "***" and SECRET not in str(run)
    assert run["status"] == "COMPLETED" and run["pending"] is None and run["resume"] is None  # nothing to resume


async def test_cancel_and_fork(client: Client, waiting: AgentCheckpoint) -> None:
    assert (await client.http.post(f"/api/runs/{waiting.pid}/fork", json={"at_step": 1},
                                   headers=auth("bob"))).status_code == 403
    forked = await client.http.post(f"/api/runs/{waiting.pid}/fork", json={"at_step": 1}, headers=auth("alice"))
    assert forked.status_code == 200, forked.text
    child = (await client.http.get(f"/api/runs/{forked.json()['pid']}", headers=auth("bob"))).json()
    assert child["parent"] == waiting.pid
    assert [(s["tool"], s["kinds"]) for s in child["timeline"]] == [("search", ["replayed"])]
    bad = await client.http.post(f"/api/runs/{waiting.pid}/fork", json={"at_step": 9}, headers=auth("alice"))
    assert bad.status_code == 400
    cancelled = await client.http.post(f"/api/runs/{waiting.pid}/cancel", json={}, headers=auth("alice"))
    assert cancelled.status_code == 200 and cancelled.json()["outcome"] == "cancelled"
    run = (await client.http.get(f"/api/runs/{waiting.pid}", headers=auth("bob"))).json()
    assert (run["status"], run["preempted"], run["pending"]) == ("PREEMPTED", "cancelled", None)
    assert (await client.http.post(f"/api/runs/{waiting.pid}/approve", json={},
                                   headers=auth("alice"))).status_code == 409


async def test_scopes_top_up_and_reset_are_for_admins(client: Client, backend: Backend) -> None:
    await backend.budgets.set_scope("team-a", {"api": 100})
    await backend.budgets.charge("r1", 0, {"api": 30}, ["team-a"])
    shown = (await client.http.get("/api/scopes/team-a", headers=auth("bob"))).json()
    assert shown["resources"]["api"] == {"limit": 100.0, "used": 30.0, "left": 70.0}
    body = {"amounts": {"api": 50}}
    assert (await client.http.post("/api/scopes/team-a/top-up", json=body, headers=auth("alice"))).status_code == 403
    topped = await client.http.post("/api/scopes/team-a/top-up", json=body, headers=auth("carol"))
    assert topped.json()["resources"]["api"]["limit"] == 150.0
    bad = await client.http.post("/api/scopes/team-a/top-up", json={"amounts": {"api": -1}}, headers=auth("carol"))
    assert bad.status_code == 400
    reset = await client.http.post("/api/scopes/team-a/reset", json={}, headers=auth("carol"))
    assert reset.json()["resources"]["api"]["used"] == 0.0
    assert (await client.http.get("/api/scopes/nope", headers=auth("bob"))).status_code == 404  # as a missing run


async def test_the_openapi_description_covers_every_api_route(client: Client) -> None:
    spec = (await client.http.get("/api/openapi.json")).json()
    routes = {r.path for r in client.app.routes if getattr(r, "path", "").startswith("/api/")}
    routes.discard("/api/openapi.json")
    assert routes == set(spec["paths"])
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    me = (await client.http.get("/api/me", headers=auth("dave"))).json()
    assert me == {"name": "dave", "role": "approver", "tools": ["search"]}


async def test_modify_answers_the_call_with_feedback(client: Client, waiting: AgentCheckpoint, kernel: Castor) -> None:
    reply = await client.http.post(f"/api/runs/{waiting.pid}/modify", json={"feedback": "archive them instead"},
                                   headers=auth("carol"))
    assert reply.status_code == 200 and reply.json()["outcome"] == "modify"
    done = await kernel.run(cleanup, checkpoint=await kernel.aload(waiting.pid))
    record = done.syscall_log[1]
    assert record.response["status"] == "HITL_MODIFIED" and "archive them instead" in str(record.response)
    assert record.decided_by == "carol"


async def test_the_timeline_shows_flagged_and_failed_steps(client: Client, kernel: Castor) -> None:
    flagged = await kernel.run(cleanup, speculative=True)  # the destructive call runs, flagged for review
    run = (await client.http.get(f"/api/runs/{flagged.pid}", headers=auth("bob"))).json()
    assert [s["kinds"] for s in run["timeline"]] == [["live"], ["live", "flagged"]]
    assert run["timeline"][1]["review_reason"]

    calls = {"n": 0}

    async def flaky(query: str) -> str:
        calls["n"] += 1
        raise RuntimeError(f"upstream down ({query})")

    async def agent() -> str:
        await tool("flaky", query="x")
        return "never"

    broken = Castor(tools=[flaky], store=kernel.backend)
    with pytest.raises(RuntimeError):
        await broken.run(agent, pid="broken-1")
    run = (await client.http.get("/api/runs/broken-1", headers=auth("bob"))).json()
    assert [(s["step"], s["kinds"], s["result"]) for s in run["timeline"]] == [
        (0, ["failed"], "RuntimeError: upstream down (x)")
    ]

    async def fine() -> str:
        return "ok"

    async def goes_on() -> str:  # catches the failure and goes on: the failed step is journaled, shown once
        with contextlib.suppress(RuntimeError):
            await tool("flaky", query="y")
        return str(await tool("fine"))

    await Castor(tools=[flaky, fine], store=kernel.backend).run(goes_on, pid="broken-2")
    run = (await client.http.get("/api/runs/broken-2", headers=auth("bob"))).json()
    assert [(s["step"], s["kinds"], s["result"]) for s in run["timeline"]] == [
        (0, ["live", "failed"], "raised RuntimeError: upstream down (y)"), (1, ["live"], "ok"),
    ]


async def test_cancelling_a_run_a_live_process_drives_is_refused_and_leaves_it_as_it_was(
    client: Client, waiting: AgentCheckpoint, backend: Backend
) -> None:
    """The console cancelled a local run without its drive claim: a ``castor resume`` going on at that moment
    saved over the cancel. It now cancels as ``castor cancel --db`` does, under the claim (409 while held)."""
    from castor.kernel.claims import DRIVE_STEP, new_holder

    holder = new_holder()  # as a live `castor resume` of this machine holds it
    assert (await backend.journal.claim(waiting.pid, DRIVE_STEP, 0, holder, 15.0)).state == "claimed"
    refused = await client.http.post(f"/api/runs/{waiting.pid}/cancel", json={}, headers=auth("alice"))
    assert refused.status_code == 409 and "is being driven by" in refused.json()["error"], refused.text
    run = (await client.http.get(f"/api/runs/{waiting.pid}", headers=auth("bob"))).json()
    assert run["status"] == "SUSPENDED_FOR_HITL" and run["pending"] is not None
    await backend.journal.release_claim(waiting.pid, DRIVE_STEP, holder)
    done = await client.http.post(f"/api/runs/{waiting.pid}/cancel", json={}, headers=auth("alice"))
    assert done.status_code == 200 and done.json()["outcome"] == "cancelled"


async def test_a_child_agent_is_forked_through_its_parent_and_a_fork_named_like_a_child_is_its_own_run(
    client: Client, kernel: Castor
) -> None:
    """A child agent forked in the console was stored RUNNING with nothing to drive it (its parent drives it);
    it is refused, naming the parent. A run whose pid only looks like a child's (the fork of a run whose agent
    is named ``fork`` is ``<parent>::fork-<n>``, as a child agent named ``fork`` would be) keeps its own
    budget and decisions: they went to its parent."""
    from castor import castor_agent
    from castor.lib import join, spawn

    @castor_agent(name="console_kid")
    async def kid() -> str:
        return str(await tool("delete_file", path="/tmp/kid", token=SECRET))

    async def parent() -> str:
        return str(await join(await spawn("console_kid", capabilities={"api": 3})))

    waiting = await kernel.run(parent, pid="kp", budgets={"api": 10})
    assert waiting.status == "SUSPENDED_FOR_HITL"
    refused = await client.http.post("/api/runs/kp::console_kid-0/fork", json={"at_step": 0}, headers=auth("alice"))
    assert refused.status_code == 400 and "child agent of run 'kp', which drives it: fork kp" in refused.text

    async def fork() -> str:  # an agent named fork: its fork's pid reads like a child agent's
        await tool("search", query="logs")
        return str(await tool("delete_file", path="/tmp/f", token=SECRET))

    first = await kernel.run(fork, pid="fp", budgets={"api": 5})
    assert first.status == "SUSPENDED_FOR_HITL"
    forked = await kernel.run(fork, checkpoint=first.fork(at_step=1), budgets={"api": 99})
    assert forked.pid == "fp::fork-1" and forked.status == "SUSPENDED_FOR_HITL"
    queue = (await client.http.get("/api/approvals", headers=auth("bob"))).json()["approvals"]
    rows = {row["pid"]: row for row in queue}
    assert rows["fp::fork-1"]["budget"]["api"]["limit"] == 99.0, rows["fp::fork-1"]
    decided = await client.http.post("/api/runs/fp::fork-1/approve", json={}, headers=auth("alice"))
    assert decided.status_code == 200 and decided.json()["pid"] == "fp::fork-1", decided.text


async def test_two_operators_forking_a_run_at_the_same_step_get_one_fork(
    client: Client, waiting: AgentCheckpoint
) -> None:
    import asyncio

    first, second = await asyncio.gather(*(
        client.http.post(f"/api/runs/{waiting.pid}/fork", json={"at_step": 1}, headers=auth(who))
        for who in ("alice", "carol")
    ))
    assert sorted([first.status_code, second.status_code]) == [200, 409], (first.text, second.text)
    refused = first if first.status_code == 409 else second
    assert refused.json()["error"] == f"run '{waiting.pid}::fork-1' exists already"


async def test_a_run_driven_outside_the_fleet_shows_the_process_that_drives_it(
    client: Client, waiting: AgentCheckpoint, backend: Backend, store: str
) -> None:
    """A run a program drives embedded on the fleet's Redis (its drive claim held) showed no owner; on SQLite,
    with no fleet, a run has no owner whoever drives it."""
    from castor.seams import DRIVE_STEP

    assert (await backend.journal.claim(waiting.pid, DRIVE_STEP, 0, "host:4242:ab", 15)).state == "claimed"
    run = (await client.http.get(f"/api/runs/{waiting.pid}", headers=auth("bob"))).json()
    assert run["owner"] == ("host:4242:ab" if store.startswith("redis") else None)
    await backend.journal.release_claim(waiting.pid, DRIVE_STEP, "host:4242:ab")
    run = (await client.http.get(f"/api/runs/{waiting.pid}", headers=auth("bob"))).json()
    assert run["owner"] is None


async def test_a_store_that_went_away_is_a_503_that_says_so(
    client: Client, waiting: AgentCheckpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis restarting, a disk full: the API and the pages answer 503 with the store's own message (it was an
    error of the server, 500, without a word)."""
    from castor.errors import BackendUnavailable

    async def away(*_args: Any, **_kwargs: Any) -> Any:
        raise BackendUnavailable("Redis at redis://127.0.0.1:6379/0 is unavailable: connection refused")

    monkeypatch.setattr(client.state.console.backend.approvals, "pending", away)
    api = await client.http.get("/api/approvals", headers=auth("bob"))
    assert api.status_code == 503 and "is unavailable: connection refused" in api.json()["error"]
    page = await client.http.get("/approvals", headers=auth("bob"))
    assert page.status_code == 503 and "is unavailable: connection refused" in page.text


async def test_a_console_started_while_its_store_is_away_answers_503_until_it_is_back(
    backend: Backend, store: str, waiting: AgentCheckpoint, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It starts all the same (it stopped at start, a traceback), says so once (not at every look of its
    feed), and its first look once the store is back announces nothing: as at any start, the calls waiting
    already are not new."""
    import asyncio
    import logging

    caplog.set_level(logging.WARNING, logger="castor.console")

    from castor.errors import BackendUnavailable
    from tests.console.conftest import open_client

    real, away, announced = backend.approvals.pending, [True], []

    async def pending(*args: Any, **kwargs: Any) -> Any:
        if away[0]:
            raise BackendUnavailable("Redis at redis://127.0.0.1:6379/0 is unavailable: connection refused")
        return await real(*args, **kwargs)

    monkeypatch.setattr(backend.approvals, "pending", pending)
    async for client in open_client(backend, store, poll_interval=0.05):
        feed = client.state.feed
        feed.publish = announced.append
        down = await client.http.get("/api/approvals", headers=auth("bob"))
        await asyncio.sleep(0.4)  # the feed looks every 0.05 s: eight looks while the store is away
        said = [r.getMessage() for r in caplog.records if r.name == "castor.console"]
        away[0] = False
        for _ in range(200):
            if feed.pending:
                break
            await asyncio.sleep(0.02)
        up = await client.http.get("/api/approvals", headers=auth("bob"))
    assert down.status_code == 503 and "connection refused" in down.json()["error"]
    assert up.status_code == 200 and [row["pid"] for row in up.json()["approvals"]] == [waiting.pid]
    assert list(feed.pending) and not [m for m in announced if m.get("event") == "approvals"]
    assert len(said) == 1 and "connection refused (pages and the API answer 503 meanwhile)" in said[0], said
    assert any("the store answers again" in r.getMessage() for r in caplog.records), caplog.text
