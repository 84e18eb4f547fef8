"""The console's pages: sign-in, CSRF on every form, decisions from the page under the signed-in name,
redaction in the HTML, scope reset only when confirmed, and the refusal to serve beyond loopback unsigned."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from castor import Castor
from castor.checkpoint import AgentCheckpoint
from castor.console.auth import SESSION_SECONDS, Gate
from castor.seams import Backend
from castor.settings._console import ConsoleSection
from tests.console.conftest import SECRET, TOKENS, USERS, Client, cleanup, open_client


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
    odd = await client.http.post(f"/approvals/{waiting.pid}/decide", data={"outcome": "approve", "csrf": "é" * 32})
    assert odd.status_code == 403  # refused, not an error of the server (comparing it raised)
    assert (await client.state.console.backend.approvals.pending(waiting.pid))
    reply = await client.http.post(f"/approvals/{waiting.pid}/decide", data={"outcome": "approve", "csrf": csrf})
    assert reply.status_code == 303 and "approved+by+alice" in reply.headers["location"]
    recorded = (await client.http.get(f"/runs/{waiting.pid}")).text
    assert "Decided: approve by alice" in recorded and f"castor resume {waiting.pid} --" in recorded
    done = await kernel.run(cleanup, checkpoint=await kernel.aload(waiting.pid))
    assert done.syscall_log[1].decided_by == "alice"
    timeline = await client.http.get(f"/runs/{waiting.pid}")
    assert "approved by alice" in timeline.text and SECRET not in timeline.text


async def test_a_session_cookie_the_console_did_not_seal_or_that_expired_signs_nobody_in(client: Client) -> None:
    """The session cookie is ``<name>|<expiry>|<mac>``: one with a made-up MAC, one sealed under another key
    (a restarted console's) and one past its expiry name nobody, while the console's own fresh one does."""
    gate = client.state.gate
    far = int(time.time()) + 3600
    forged = base64.urlsafe_b64encode(f"carol|{far}|{'0' * 64}".encode()).decode()
    other = Gate(ConsoleSection.model_validate({"users": USERS}), key=b"k" * 32).seal("carol")
    expired = gate.seal("carol", now=time.time() - SESSION_SECONDS - 60)
    for cookie in (forged, other, expired):
        client.http.cookies.set("castor_session", cookie)
        assert (await client.http.get("/api/me")).status_code == 401
    client.http.cookies.set("castor_session", gate.seal("carol"))
    assert (await client.http.get("/api/me")).json()["name"] == "carol"


async def test_a_browser_session_cannot_post_to_the_api_without_json(client: Client, waiting: AgentCheckpoint) -> None:
    """A bearer token's program may POST no body at all; a browser's session may not (an empty cross-site
    form POST carries the session cookie only if the site is the console's, but JSON is the rule that holds)."""
    await sign_in(client, "alice")
    bare = await client.http.post(f"/api/runs/{waiting.pid}/approve")
    assert bare.status_code == 415
    assert await client.state.console.backend.approvals.pending(waiting.pid)


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


async def test_a_cross_site_form_carrying_no_csrf_cookie_nor_field_is_refused(
    open_console: Client, waiting: AgentCheckpoint
) -> None:
    """A page of another site posting to an unsigned console on loopback sends no CSRF cookie (it is
    ``SameSite=Strict``) and no field: the two missing values are no match, and the call still waits."""
    open_console.http.cookies.clear()
    forged = await open_console.http.post(f"/approvals/{waiting.pid}/decide", data={"outcome": "approve"})
    assert forged.status_code == 403
    empty = await open_console.http.post(f"/approvals/{waiting.pid}/decide", data={"outcome": "approve", "csrf": ""})
    assert empty.status_code == 403
    assert await open_console.state.console.backend.approvals.pending(waiting.pid)


def test_the_console_refuses_to_listen_beyond_loopback_without_users(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from castor.cli import main

    code = main(["console", "--host", "0.0.0.0", "--db", str(tmp_path / "c.db")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "[[console.users]]" in err


def test_a_console_on_a_port_in_use_says_so_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It printed "serving http://...", then uvicorn's address-in-use error, then "Event loop is closed"."""
    import socket

    from castor.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["console", "--db", str(tmp_path / "c.db"), "--port", str(port)])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err == (f"castor: error: castor console cannot listen on 127.0.0.1:{port}: Address already in "
                            "use (another console, or castor mcp? --port picks another)\n")
