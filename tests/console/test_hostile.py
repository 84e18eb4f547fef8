"""Hostile input to the console: bodies of the wrong shape, type or size, and pids and scopes with odd
characters, get a 4xx with a one-line reason, never a 500, and leave the waiting call as it was."""

from __future__ import annotations

from collections.abc import AsyncIterator

from castor.checkpoint import AgentCheckpoint
from castor.console.limits import MAX_BODY_BYTES
from castor.seams import Backend
from tests.console.conftest import Client, auth, open_client
from tests.console.test_pages import sign_in

JSON = {**auth("carol"), "content-type": "application/json"}


async def _still_waiting(client: Client, pid: str) -> None:
    pending = (await client.http.get(f"/api/runs/{pid}", headers=auth("bob"))).json()["pending"]
    assert pending is not None and pending["decision"] is None


async def test_bodies_of_the_wrong_shape_or_type_are_refused(client: Client, waiting: AgentCheckpoint) -> None:
    pid = waiting.pid
    refused = [
        await client.http.post(f"/api/runs/{pid}/approve", content=b"[" * 100_000, headers=JSON),  # RecursionError
        await client.http.post(f"/api/runs/{pid}/reject", json={"reason": {"rm": "-rf"}}, headers=auth("carol")),
        await client.http.post(f"/api/runs/{pid}/modify", json={"feedback": ["a"]}, headers=auth("carol")),
        await client.http.post("/api/scopes/team/top-up", json={"amounts": {"api": 10**400}}, headers=auth("carol")),
    ]
    assert [r.status_code for r in refused] == [400] * 4, [r.text for r in refused]
    assert "nested too deep" in refused[0].json()["error"]
    assert refused[1].json()["error"] == "'reason' must be a string, got dict"
    await _still_waiting(client, pid)


async def test_a_body_past_the_limit_is_refused_before_it_is_held(client: Client, waiting: AgentCheckpoint) -> None:
    big = "x" * (MAX_BODY_BYTES + 1)
    declared = await client.http.post(f"/api/runs/{waiting.pid}/reject", json={"reason": big}, headers=auth("carol"))
    assert declared.status_code == 413 and "larger than" in declared.json()["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(MAX_BODY_BYTES // 10_000 + 2):
            yield b"x" * 10_000

    streamed = await client.http.post(f"/api/runs/{waiting.pid}/reject", content=chunks(), headers=JSON)
    assert streamed.status_code == 413
    sign_in = await client.http.post("/login", content=chunks(),  # before anyone signed in
                                     headers={"content-type": "application/x-www-form-urlencoded"})
    assert sign_in.status_code == 413
    await _still_waiting(client, waiting.pid)


async def test_pids_and_scopes_with_odd_characters_are_not_found(client: Client, waiting: AgentCheckpoint) -> None:
    for pid in ("nope", "a%00b", "x" * 5000, "%E2%80%AE", "%0Aline", "::fork-1", f"{waiting.pid}::fork-99999"):
        for method, path in (("GET", ""), ("POST", "/approve"), ("POST", "/cancel"), ("POST", "/fork")):
            r = await client.http.request(method, f"/api/runs/{pid}{path}", json={"at_step": 0}, headers=auth("carol"))
            assert r.status_code == 404, (pid[:20], path, r.status_code, r.text[:200])
    for scope in ("%00", "x" * 5000):
        assert (await client.http.get(f"/api/scopes/{scope}", headers=auth("carol"))).status_code == 404
    await _still_waiting(client, waiting.pid)


async def test_numbers_int_would_refuse_are_a_400(client: Client, waiting: AgentCheckpoint) -> None:
    for limit in ("%C2%B2", "9" * 5000):  # '²' passes str.isdigit; 5,000 digits pass it too
        r = await client.http.get(f"/api/runs?limit={limit}", headers=auth("carol"))
        assert r.status_code == 400 and "limit must be a whole number" in r.json()["error"], r.text[:200]
    csrf = await sign_in(client, "carol")
    for at_step in ("²", "9" * 5000):
        r = await client.http.post(f"/runs/{waiting.pid}/fork", data={"at_step": at_step, "csrf": csrf},
                                   headers={"accept": "application/json"})
        assert r.status_code == 400 and "at_step must be a whole number" in r.json()["error"], r.text[:200]


async def test_a_by_that_is_not_a_name_is_refused_even_without_users(backend: Backend, store: str,
                                                                       waiting: AgentCheckpoint) -> None:
    async for open_console in open_client(backend, store, users=[]):  # loopback, no sign-in: 'by' is taken
        r = await open_console.http.post(f"/api/runs/{waiting.pid}/approve", json={"by": {"name": "x"}})
        assert r.status_code == 400 and r.json()["error"] == "'by' must be a string, got dict", r.text
        await _still_waiting(open_console, waiting.pid)
