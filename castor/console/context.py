"""What every console handler shares: the app's state, who is asking, and how errors map to statuses."""

from __future__ import annotations

from starlette.requests import Request

from castor.console.auth import SESSION_COOKIE, Denied, Gate, Identity
from castor.console.feed import Feed
from castor.console.service import Console
from castor.console.webhook import Webhook
from castor.errors import (
    BackendUnavailable,
    ConfigError,
    InvalidPidError,
    NothingPendingError,
    RunBusyError,
    RunExistsError,
    RunNotFoundError,
)


class State:
    """What every handler reaches through ``request.app.state.castor``."""

    def __init__(self, console: Console, gate: Gate, feed: Feed, webhook: Webhook | None, base_url: str) -> None:
        self.console = console
        self.gate = gate
        self.feed = feed
        self.webhook = webhook
        self.base_url = base_url


def state(request: Request) -> State:
    """The console's state of the app serving ``request``."""
    found: State = request.app.state.castor
    return found


def identity(request: Request) -> Identity:
    """Who sent ``request``; ``Denied`` (401) if nobody signed in."""
    who = state(request).gate.identify(request.headers.get("authorization"), request.cookies.get(SESSION_COOKIE))
    if who is None:
        raise Denied(401, "sign in first: a bearer token, or the sign-in page")
    return who


def error_status(exc: Exception) -> int | None:
    """The HTTP status of an error the console expects, None for a bug."""
    if isinstance(exc, Denied):
        return exc.status
    if isinstance(exc, RunNotFoundError):
        return 404
    if isinstance(exc, NothingPendingError | RunBusyError | RunExistsError):
        # decided already, nothing waits, a live process drives the run, or another made the fork: the state moved on
        return 409
    if isinstance(exc, ConfigError | InvalidPidError):
        return 400
    if isinstance(exc, BackendUnavailable):  # the store is away (Redis restarting, a disk full): try again later
        return 503
    return None


