"""The console's pages: sign-in, CSRF on every form, decisions from the page under the signed-in name,
redaction in the HTML, scope reset only when confirmed, and the refusal to serve beyond loopback unsigned."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from castor import Castor
from castor.checkpoint import AgentCheckpoint
from castor.seams import Backend
from tests.console.conftest import SECRET, TOKENS, Client, cleanup, open_client


def csrf_in(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)


async def sign_in(client: Client, name: str) -> str:
    """Sign in through the form; returns the CSRF token the pages carry."""
    page = await client.http.get("/login")
    token = csrf_in(page.text)
    reply = await client.http.post("/login", data={"csrf": token, "token": TOKENS[name], "next": "/approvals"})
    assert reply.status_code == 303 and reply.headers["location"] == "/approvals"
    assert "castor_session" in client.http.cookies
    return token


async def test_a_page_asks_who_you_are_first(client: Client) -> None:
    reply = await client.http.get("/approvals")
    assert reply.status_code == 303 and reply.headers["location"].startswith("/login")
    page = await client.http.get("/login")
    bad = await client.http.post("/login", data={"csrf": csrf_in(page.text), "token": "wrong-token-123456789"})
    assert "problem=unknown+token" in bad.headers["location"]


async def test_sign_in_without_the_csrf_token_is_refused(client: Client) -> None:
    await client.http.get("/login")  # the CSRF cookie is set
    reply = await client.http.post("/login", data={"token": TOKENS["alice"]})
    assert reply.status_code == 403 and "castor_session" not in client.http.cookies


async def test_approve_from_the_page(client: Client, waiting: AgentCheckpoint, kernel: Castor) -> None:
    csrf = await sign_in(client, "alice")
    page = await client.http.get("/approvals")
    assert page.status_code == 200 and waiting.pid in page.text and "delete_file" in page.text
    assert SECRET not in page.text and "***" in page.text
    forged = await client.http.post(f"/approvals/{waiting.pid}/decide", data={"outcome": "approve"})
    assert forged.status_code == 403  # no CSRF token: no decision
    wrong = await client.http.post(f"/approvals/{waiting.pid}/decide", data={"outcome": "approve", "csrf": "x" * 32})
    assert wrong.status_code == 403
    assert (await client.state.console.backend.approvals.pending(waiting.pid))
    reply = await client.http.post(f"/approvals/{waiting.pid}/decide", data={"outcome": "approve", "csrf": csrf})
    assert reply.status_code == 303 and "approved+by+alice" in reply.headers["location"]
    recorded = (await client.http.get(f"/runs/{waiting.pid}")).text
    assert "Decided: approve by alice" in recorded and f"castor resume {waiting.pid} --" in recorded
    done = await kernel.run(cleanup, checkpoint=await kernel.aload(waiting.pid))
    assert done.syscall_log[1].decided_by == "alice"
    timeline = await client.http.get(f"/runs/{waiting.pid}")
    assert "approved by alice" in timeline.text and SECRET not in timeline.text


async def test_a_viewer_sees_no_decision_buttons_and_cannot_post_one(client: Client, waiting: AgentCheckpoint) -> None:
    csrf = await sign_in(client, "bob")
    page = await client.http.get("/approvals")
    assert waiting.pid in page.text and 'data-action="approve"' not in page.text
    reply = await client.http.post(f"/approvals/{waiting.pid}/decide", data={"outcome": "approve", "csrf": csrf})
    assert reply.status_code == 403


async def test_a_reset_needs_the_scope_name_typed_again(client: Client, backend: Backend) -> None:
    await backend.budgets.set_scope("team-a", {"api": 100})
    await backend.budgets.charge("r1", 0, {"api": 30}, ["team-a"])
    csrf = await sign_in(client, "carol")
    page = await client.http.get("/scopes?scope=team-a")
    assert "30 / 100" in page.text
    unconfirmed = await client.http.post("/scopes/team-a/reset", data={"csrf": csrf, "confirm": "yes"})
    assert "problem=" in unconfirmed.headers["location"]
    assert (await backend.budgets.read_scope("team-a"))["api"] == (100.0, 30.0)
    await client.http.post("/scopes/team-a/reset", data={"csrf": csrf, "confirm": "team-a"})
    assert (await backend.budgets.read_scope("team-a"))["api"] == (100.0, 0.0)
    await client.http.post("/scopes/team-a/top-up", data={"csrf": csrf, "resource": "api", "amount": "25"})
    assert (await backend.budgets.read_scope("team-a"))["api"] == (125.0, 0.0)


@pytest.fixture
async def open_console(backend: Backend, store: str) -> AsyncIterator[Client]:
    async for c in open_client(backend, store, users=[]):
        yield c


async def test_with_no_users_the_os_user_is_admin_and_forms_still_need_csrf(
    open_console: Client, waiting: AgentCheckpoint
) -> None:
    page = await open_console.http.get("/approvals")
    assert page.status_code == 200 and waiting.pid in page.text
    forged = await open_console.http.post(f"/approvals/{waiting.pid}/decide", data={"outcome": "approve"})
    assert forged.status_code == 403
    rebound = await open_console.http.get("/api/approvals", headers={"Host": "evil.example:8765"})
    assert rebound.status_code == 400  # a rebound name reaches no unsigned console


def test_the_console_refuses_to_listen_beyond_loopback_without_users(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from castor.cli import main

    code = main(["console", "--host", "0.0.0.0", "--db", str(tmp_path / "c.db")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "[[console.users]]" in err
