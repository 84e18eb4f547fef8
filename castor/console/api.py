"""The console's HTTP JSON API: what the pages do, for programs (``/api/openapi.json`` describes it).

Every request is signed in with ``Authorization: Bearer <token>`` (or a browser's session). A POST must
send ``Content-Type: application/json``: a page of another site cannot (not without a CORS preflight,
which the console never answers), so the API needs no CSRF token. ``by`` in a decision, if given, must
be the signed-in user: the journal records who decided, never who they said they were.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from castor.cli._status import STATUSES
from castor.console.auth import Denied, Identity
from castor.console.context import identity, state
from castor.console.openapi import SPEC
from castor.errors import ConfigError
from castor.seams import DecisionOutcome

OUTCOMES: tuple[DecisionOutcome, ...] = ("approve", "reject", "modify")
TEXT_FIELD = {"approve": None, "reject": "reason", "modify": "feedback"}


def status_filter(text: str | None) -> str | None:
    """A ``status`` query value as the store names it (``hitl`` and ``SUSPENDED_FOR_HITL`` alike)."""
    if not text:
        return None
    found = STATUSES.get(text.strip().lower())
    if found is None:
        raise ConfigError(f"unknown status {text!r}: use running, hitl, completed, preempted or failed")
    return found


def whole_number(text: str) -> bool:
    """Whether ``text`` is a whole number ``int`` takes: ASCII digits (``str.isdigit`` passes ``²``, which
    ``int`` refuses), and not thousands of them (``int`` refuses past 4,300)."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def limit_of(request: Request, default: int = 50) -> int:
    """The ``limit`` query value, 1 to 500."""
    text = request.query_params.get("limit") or str(default)
    if not whole_number(text) or not 1 <= int(text) <= 500:
        raise ConfigError(f"limit must be a whole number from 1 to 500, got {text!r}")
    return int(text)


async def body_of(request: Request) -> dict[str, Any]:
    """The JSON object a POST sent (``{}`` for an empty body); 415 for another content type. A program
    signed in by its bearer token may send no body at all (``curl -X POST``): the JSON rule keeps other
    sites' pages from posting with a browser's session, and a bearer token is no browser's."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        if identity(request).bearer and not (await request.body()).strip():
            return {}
        raise Denied(415, "send Content-Type: application/json")
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"the body is not JSON: {exc}") from None
    except RecursionError:  # arrays nested thousands deep: no body of this API nests beyond a few levels
        raise ConfigError("the body is not JSON this API takes: it is nested too deep") from None
    if not isinstance(data, dict):
        raise ConfigError("the body must be a JSON object")
    return data


async def decide_as(request: Request, who: Identity, pid: str, outcome: DecisionOutcome, text: str) -> dict[str, Any]:
    """Record ``who``'s decision after checking they may decide the tool the run waits on."""
    console = state(request).console
    tool = await console.pending_tool(pid)
    if not who.may_decide(tool):
        raise Denied(403, f"{who.name} ({who.role}) may not decide calls to {tool}")
    return await console.decide(pid, outcome, who.name, text)


async def approvals(request: Request) -> Response:
    """``GET /api/approvals``: calls waiting for a decision, oldest first."""
    identity(request)
    return JSONResponse({"approvals": await state(request).console.approvals()})


def decider(outcome: DecisionOutcome) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint of ``POST /api/runs/{pid}/<outcome>``."""

    async def endpoint(request: Request) -> Response:
        return await decide(request, outcome)

    endpoint.__name__ = outcome
    return endpoint


async def decide(request: Request, outcome: DecisionOutcome) -> Response:
    """``POST /api/runs/{pid}/approve|reject|modify`` with ``{"by"?, "reason"/"feedback"}``."""
    who = identity(request)
    body = await body_of(request)
    by = body.get("by")
    if by is not None and not isinstance(by, str):  # the journal's decided_by: a name, never a repr
        raise ConfigError(f"'by' must be a string, got {type(by).__name__}")
    if by not in (None, "", who.name) and not state(request).gate.open:
        raise Denied(403, f"signed in as {who.name}: 'by' must be {who.name!r} or left out")
    field = TEXT_FIELD[outcome]
    given = (body.get(field) or body.get("reason") or "") if field else ""
    if not isinstance(given, str):  # the agent is told this text: never a Python repr of an object
        raise ConfigError(f"{field!r} must be a string, got {type(given).__name__}")
    text = given
    if field and not text.strip():
        raise ConfigError(f"{outcome} needs a {field!r}: what the agent is told")
    name = str(by) if by and state(request).gate.open else who.name
    decided = await decide_as(request, Identity(name, who.role, who.tools), request.path_params["pid"], outcome, text)
    return JSONResponse(decided)


async def runs(request: Request) -> Response:
    """``GET /api/runs?status=&agent=&limit=``: runs, newest first."""
    identity(request)
    q = request.query_params
    rows = await state(request).console.runs(status_filter(q.get("status")), q.get("agent", ""), limit_of(request))
    return JSONResponse({"runs": rows})


async def run(request: Request) -> Response:
    """``GET /api/runs/{pid}``: the run with its timeline."""
    identity(request)
    return JSONResponse(await state(request).console.run(request.path_params["pid"]))


async def cancel(request: Request) -> Response:
    """``POST /api/runs/{pid}/cancel`` (approver)."""
    who = identity(request)
    who.require("approver")
    await body_of(request)
    outcome = await state(request).console.cancel(request.path_params["pid"], who.name)
    return JSONResponse({"pid": request.path_params["pid"], "outcome": outcome})


async def fork(request: Request) -> Response:
    """``POST /api/runs/{pid}/fork`` with ``{"at_step": N}`` (approver)."""
    who = identity(request)
    who.require("approver")
    at_step = (await body_of(request)).get("at_step")
    if not isinstance(at_step, int) or isinstance(at_step, bool):
        raise ConfigError("fork needs 'at_step', a whole number of steps to keep")
    pid, then = await state(request).console.fork(request.path_params["pid"], at_step)
    return JSONResponse({"pid": pid, "parent": request.path_params["pid"], "at_step": at_step, "next": then})


async def scopes(request: Request) -> Response:
    """``GET /api/scopes``: the scopes the newest runs draw from."""
    identity(request)
    return JSONResponse({"scopes": await state(request).console.known_scopes()})


async def scope(request: Request) -> Response:
    """``GET /api/scopes/{scope}``: limit, used and left per resource."""
    identity(request)
    return JSONResponse(await state(request).console.scope(request.path_params["scope"]))


def amounts_of(raw: Any) -> dict[str, float]:
    """``{"api": 100}``: finite, non-negative numbers by resource name."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("'amounts' must be an object of resource: amount, e.g. {\"api\": 100}")
    amounts = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value) or value < 0:
            raise ConfigError(f"amount of {name!r} must be a non-negative number, got {value!r}")
        amounts[str(name)] = float(value)
    return amounts


def _finite(value: float) -> bool:
    # JSON's integers have no bound: one past a float's range is no amount (math.isfinite would raise on it)
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


async def top_up(request: Request) -> Response:
    """``POST /api/scopes/{scope}/top-up`` with ``{"amounts": {...}}`` (admin)."""
    identity(request).require("admin")
    amounts = amounts_of((await body_of(request)).get("amounts"))
    return JSONResponse(await state(request).console.top_up(request.path_params["scope"], amounts))


async def reset(request: Request) -> Response:
    """``POST /api/scopes/{scope}/reset`` (admin)."""
    identity(request).require("admin")
    await body_of(request)
    return JSONResponse(await state(request).console.reset(request.path_params["scope"]))


async def me(request: Request) -> Response:
    """``GET /api/me``: who the request is signed in as."""
    who = identity(request)
    return JSONResponse({"name": who.name, "role": who.role, "tools": sorted(who.tools)})


async def openapi(request: Request) -> Response:
    """``GET /api/openapi.json`` (no sign-in needed: it holds no data)."""
    return JSONResponse(SPEC)


def routes() -> list[Route]:
    """The API's routes."""
    return [
        Route("/api/openapi.json", openapi),
        Route("/api/me", me),
        Route("/api/approvals", approvals),
        Route("/api/runs", runs),
        Route("/api/runs/{pid}", run),
        *(Route(f"/api/runs/{{pid}}/{o}", decider(o), methods=["POST"]) for o in OUTCOMES),
        Route("/api/runs/{pid}/cancel", cancel, methods=["POST"]),
        Route("/api/runs/{pid}/fork", fork, methods=["POST"]),
        Route("/api/scopes", scopes),
        Route("/api/scopes/{scope}", scope),
        Route("/api/scopes/{scope}/top-up", top_up, methods=["POST"]),
        Route("/api/scopes/{scope}/reset", reset, methods=["POST"]),
    ]
