"""The console's ASGI app: pages, JSON API, events and static files over one ``Console``.

``create_app`` takes an opened backend (and the fleet's client on Redis); the app starts the live feed
(and the webhook) when it starts and stops them with itself. It closes nothing it was given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from castor.console import api, pages
from castor.console.auth import Denied, Gate
from castor.console.context import State, error_status, identity, state
from castor.console.feed import Feed
from castor.console.limits import BodyLimit
from castor.console.resumer import Resumer
from castor.console.service import Console
from castor.console.webhook import Webhook
from castor.errors import BackendUnavailable, ConfigError, InvalidPidError, NothingPendingError, RunNotFoundError
from castor.seams import Backend
from castor.settings._console import ConsoleSection

if TYPE_CHECKING:
    from castor.fleet.client import FleetClient

HERE = Path(__file__).resolve().parent


async def events(request: Request) -> Response:
    """``GET /events``: server-sent events of new and decided calls and changed runs."""
    identity(request)
    return StreamingResponse(
        state(request).feed.events(), media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def health(request: Request) -> Response:
    """``GET /healthz``: 200 while the console serves (no sign-in needed)."""
    return JSONResponse({"ok": True})


def create_app(
    backend: Backend, settings: ConsoleSection | None = None, *, fleet: FleetClient | None = None,
    base_url: str = "http://127.0.0.1:8765", session_key: bytes | None = None,
) -> Starlette:
    """The console over ``backend`` (``fleet``: the fleet's client when the store is the fleet's Redis)."""
    settings = settings or ConsoleSection()
    base_url = settings.base_url or base_url
    console = Console(backend, fleet, Resumer(backend.url) if settings.resume and fleet is None else None)
    webhook = Webhook(settings.webhook, base_url) if settings.webhook else None
    feed = Feed(console, settings.poll_interval, webhook.notify if webhook else None)
    castor_state = State(console, Gate(settings, session_key), feed, webhook, base_url)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await feed.start()
        try:
            yield
        finally:
            await feed.stop()
            if webhook is not None:
                await webhook.drain()
            if console.resumer is not None:
                await console.resumer.drain()

    routes: list[BaseRoute] = [
        *api.routes(), *pages.routes(),
        Route("/events", events), Route("/healthz", health),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    handled = (Denied, RunNotFoundError, NothingPendingError, ConfigError, InvalidPidError, BackendUnavailable)
    middleware = [Middleware(BodyLimit)]  # before anything reads a body, the sign-in form included
    if castor_state.gate.open:
        # No sign-in: only loopback names may reach it, or a page of another site whose name was rebound to
        # 127.0.0.1 (DNS rebinding) would be same-origin with the console and could decide calls.
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "[::1]", "::1"]))
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware,
                    exception_handlers=dict.fromkeys(handled, _error))
    app.state.castor = castor_state
    return app


async def _error(request: Request, exc: Exception) -> Response:
    status = error_status(exc)
    if status is None:
        raise exc
    # A KeyError (RunNotFoundError) shows its message quoted: say the message itself.
    message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    if request.url.path.startswith("/api/") or request.headers.get("accept", "").startswith("application/json"):
        return JSONResponse({"error": message}, status_code=status)
    return pages.error_page(request, status, message)


