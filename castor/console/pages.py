"""The console's HTML pages: approvals, runs, a run's timeline, budget scopes, sign-in.

Pages are rendered on the server (Jinja2, autoescaped); ``static/console.js`` refreshes a page's live
part (``?fragment=1``) when the event stream says it changed. Every form is a POST carrying the CSRF
token (``castor.console.auth``); after it the browser is redirected (post/redirect/get) with a notice.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from castor.console.api import decide_as, limit_of, status_filter, whole_number
from castor.console.auth import (
    CSRF_COOKIE,
    CSRF_FIELD,
    SESSION_COOKIE,
    SESSION_SECONDS,
    Denied,
    Identity,
    csrf_ok,
    new_csrf,
)
from castor.console.context import identity, state
from castor.errors import ConfigError
from castor.seams import DecisionOutcome

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATUSES = ("running", "hitl", "completed", "preempted", "failed")


def age(seconds: float) -> str:
    """``42s``, ``7m``, ``3h``, ``2d``."""
    s = max(float(seconds), 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit}"
    return f"{int(s)}s"


def amount(value: float | None) -> str:
    """``50`` rather than ``50.0``; no limit is ``∞``."""
    return "∞" if value is None or (isinstance(value, float) and math.isinf(value)) else f"{value:g}"


def compact(value: Any, width: int = 160) -> str:
    """A value as one line of JSON, cut at ``width``."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def clock(at: float | None) -> str:
    """A time of day, UTC."""
    return "-" if not at else time.strftime("%H:%M:%S", time.gmtime(at))


def spec_name(spec: str) -> str:
    """An import spec without its directories: ``/abs/path/agent.py:main`` as ``agent.py:main``."""
    return spec.rsplit("/", 1)[-1]


ENV = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
ENV.filters.update(age=age, amount=amount, compact=compact, clock=clock, spec=spec_name,
                   q=lambda s: quote(str(s), safe=""))


def csrf_of(request: Request) -> tuple[str, bool]:
    """The request's CSRF token, and whether it is new (to be set as a cookie)."""
    token = request.cookies.get(CSRF_COOKIE)
    return (token, False) if token else (new_csrf(), True)


def render(request: Request, name: str, code: int = 200, **context: Any) -> HTMLResponse:
    """Render a template with what every page needs: the user, the CSRF token, the notice."""
    token, fresh = csrf_of(request)
    who = context.pop("who", None)
    html = ENV.get_template(name).render(
        request=request, who=who, csrf=token, csrf_field=CSRF_FIELD, notice=request.query_params.get("notice"),
        problem=request.query_params.get("problem"), gate_open=state(request).gate.open, code=code, **context,
    )
    response = HTMLResponse(html, status_code=code)
    if fresh:
        # Readable by the page's script (it is the value forms echo); worthless to another site.
        response.set_cookie(CSRF_COOKIE, token, httponly=False, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
    return response


def error_page(request: Request, status: int, message: str) -> Response:
    """An error as a page; not signed in: the sign-in page."""
    if status == 401:
        return RedirectResponse(f"/login?{urlencode({'next': request.url.path})}", status_code=303)
    return render(request, "error.html", code=status, message=message)


def back(path: str, **query: str) -> RedirectResponse:
    """Redirect after a form (303: the browser GETs the page)."""
    return RedirectResponse(f"{path}?{urlencode(query)}" if query else path, status_code=303)


async def form_of(request: Request) -> dict[str, str]:
    """The posted form, after checking its CSRF token against the cookie (403 if they differ)."""
    form = await request.form()
    data = {k: str(v) for k, v in form.items()}
    if not csrf_ok(request.cookies.get(CSRF_COOKIE), data.get(CSRF_FIELD)):
        raise Denied(403, "the form's CSRF token is missing or stale; reload the page and try again")
    return data


# --- sign-in --------------------------------------------------------------------------------------


async def login(request: Request) -> Response:
    """``GET /login``: the token form; ``POST``: sign in with it."""
    if request.method == "GET":
        return render(request, "login.html", next=request.query_params.get("next", "/approvals"))
    form = await form_of(request)
    found = state(request).gate.by_token(form.get("token", "").strip())
    target = form.get("next") or "/approvals"
    if not target.startswith("/") or target.startswith("//"):
        target = "/approvals"  # never redirect off the console
    if found is None:
        return back("/login", problem="unknown token", next=target)
    response = back(target)
    response.set_cookie(SESSION_COOKIE, state(request).gate.seal(found.name), max_age=SESSION_SECONDS,
                        httponly=True, samesite="strict", path="/", secure=request.url.scheme == "https")
    return response


async def logout(request: Request) -> Response:
    """``POST /logout``."""
    await form_of(request)
    response = back("/login", notice="signed out")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# --- approvals ------------------------------------------------------------------------------------


async def approvals(request: Request) -> Response:
    """``GET /approvals``: the queue, oldest first (``?fragment=1``: only its rows, for live updates)."""
    who = identity(request)
    rows = await state(request).console.approvals()
    name = "_approvals.html" if request.query_params.get("fragment") else "approvals.html"
    return render(request, name, who=who, rows=rows, page="approvals")


async def decide(request: Request) -> Response:
    """``POST /approvals/{pid}/decide``: approve, reject with a reason, or modify with feedback."""
    who = identity(request)
    form = await form_of(request)
    pid = request.path_params["pid"]
    outcome = form.get("outcome", "")
    if outcome not in ("approve", "reject", "modify"):
        raise ConfigError(f"unknown outcome {outcome!r}: approve, reject or modify")
    text = form.get("text", "").strip()
    if outcome != "approve" and not text:
        return back(form.get("back") or "/approvals", problem=f"{outcome} needs a reason: what the agent is told")
    chosen: DecisionOutcome = outcome  # type: ignore[assignment]
    decided = await decide_as(request, who, pid, chosen, text)
    past = {"approve": "approved", "reject": "rejected", "modify": "modified"}[outcome]
    notice = f"{pid} step {decided['step']}: {past} by {decided['by']}; {decided['next']}"
    return back(form.get("back") or "/approvals", notice=notice)


# --- runs -----------------------------------------------------------------------------------------


async def runs(request: Request) -> Response:
    """``GET /runs?status=&agent=``: runs, newest first."""
    who = identity(request)
    q = request.query_params
    rows = await state(request).console.runs(status_filter(q.get("status")), q.get("agent", ""), limit_of(request))
    name = "_runs.html" if q.get("fragment") else "runs.html"
    return render(request, name, who=who, rows=rows, page="runs", statuses=STATUSES,
                  status=q.get("status", ""), agent=q.get("agent", ""))


async def run(request: Request) -> Response:
    """``GET /runs/{pid}``: the run's timeline, its pending call, fork and cancel."""
    who = identity(request)
    data = await state(request).console.run(request.path_params["pid"])
    name = "_run.html" if request.query_params.get("fragment") else "run.html"
    return render(request, name, who=who, run=data, page="runs")


async def cancel(request: Request) -> Response:
    """``POST /runs/{pid}/cancel``."""
    who = _approver(request)
    await form_of(request)
    pid = request.path_params["pid"]
    outcome = await state(request).console.cancel(pid, who.name)
    return back(f"/runs/{quote(pid, safe='')}", notice=f"{pid}: {outcome}")


async def fork(request: Request) -> Response:
    """``POST /runs/{pid}/fork`` with ``at_step``."""
    _approver(request)
    form = await form_of(request)
    pid = request.path_params["pid"]
    text = form.get("at_step", "")
    if not whole_number(text):
        raise ConfigError(f"at_step must be a whole number, got {text!r}")
    new, then = await state(request).console.fork(pid, int(text))
    return back(f"/runs/{quote(new, safe='')}", notice=f"forked {pid} at step {text} as {new}; {then}")


def _approver(request: Request) -> Identity:
    who = identity(request)
    who.require("approver")
    return who


# --- budget scopes --------------------------------------------------------------------------------


async def scopes(request: Request) -> Response:
    """``GET /scopes``: usage against limits of every scope the newest runs draw from (and ``?scope=``)."""
    who = identity(request)
    console = state(request).console
    names = await console.known_scopes()
    asked = request.query_params.get("scope", "").strip()
    if asked and asked not in names:
        names.append(asked)
    ledgers, missing = [], []
    for name in names:
        try:
            ledgers.append(await console.scope(name))
        except ConfigError:
            missing.append(name)
    return render(request, "scopes.html", who=who, scopes=ledgers, missing=missing, page="scopes", asked=asked)


async def top_up(request: Request) -> Response:
    """``POST /scopes/{scope}/top-up`` with ``resource`` and ``amount``."""
    identity(request).require("admin")
    form = await form_of(request)
    name, resource = request.path_params["scope"], form.get("resource", "").strip()
    try:
        value = float(form.get("amount", ""))
    except ValueError:
        raise ConfigError(f"amount must be a number, got {form.get('amount')!r}") from None
    if not resource or not math.isfinite(value) or value <= 0:
        raise ConfigError("top-up needs a resource and a positive amount")
    await state(request).console.top_up(name, {resource: value})
    return back("/scopes", notice=f"{name}: {resource} raised by {value:g}", scope=name)


async def reset(request: Request) -> Response:
    """``POST /scopes/{scope}/reset``: only with ``confirm`` = the scope's name typed again."""
    identity(request).require("admin")
    form = await form_of(request)
    name = request.path_params["scope"]
    if form.get("confirm", "").strip() != name:
        return back("/scopes", problem=f"type the scope's name ({name}) to confirm the reset", scope=name)
    await state(request).console.reset(name)
    return back("/scopes", notice=f"{name}: usage reset to zero", scope=name)


async def home(request: Request) -> Response:
    """``GET /``: the approvals."""
    return RedirectResponse("/approvals", status_code=303)


def routes() -> list[Route]:
    """The pages' routes."""
    return [
        Route("/", home),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/approvals", approvals),
        Route("/approvals/{pid}/decide", decide, methods=["POST"]),
        Route("/runs", runs),
        Route("/runs/{pid}", run),
        Route("/runs/{pid}/cancel", cancel, methods=["POST"]),
        Route("/runs/{pid}/fork", fork, methods=["POST"]),
        Route("/scopes", scopes),
        Route("/scopes/{scope}/top-up", top_up, methods=["POST"]),
        Route("/scopes/{scope}/reset", reset, methods=["POST"]),
    ]
