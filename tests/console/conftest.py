"""The console's test fixtures: a kernel whose run waits on a destructive call, on SQLite and on Redis, and
an HTTP client over the console's ASGI app (its lifespan run, so the live feed watches the store)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("jinja2")
httpx = pytest.importorskip("httpx")

from castor import Castor, castor_tool  # noqa: E402
from castor.backends import open_backend  # noqa: E402
from castor.checkpoint import AgentCheckpoint  # noqa: E402
from castor.console.app import create_app  # noqa: E402
from castor.lib import tool  # noqa: E402
from castor.seams import Backend  # noqa: E402
from castor.settings._console import ConsoleSection  # noqa: E402

TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab", "carol": "carol-token-0123456789",
          "dave": "dave-token-0123456789a"}
USERS = [
    {"name": "alice", "token": TOKENS["alice"], "role": "approver"},
    {"name": "bob", "token": TOKENS["bob"], "role": "viewer"},
    {"name": "carol", "token": TOKENS["carol"], "role": "admin"},
    {"name": "dave", "token": TOKENS["dave"], "role": "approver", "tools": ["search"]},
]
SECRET = "hunter2-do-not-show"


async def search(query: str) -> list[str]:
    return [f"Result for: {query}"]


@castor_tool(destructive=True, sensitive=["token"])
async def delete_file(path: str, token: str) -> str:
    return f"Deleted {path}"


async def cleanup() -> str:
    await tool("search", query="old logs")
    await tool("delete_file", path="/tmp/old1", token=SECRET)
    return "Cleaned up"


def auth(name: str) -> dict[str, str]:
    """The bearer header of a test user."""
    return {"Authorization": f"Bearer {TOKENS[name]}"}


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The console's store: the embedded SQLite file, and Redis under the test's own prefix."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/castor.db"
    return f"{request.getfixturevalue('redis_url')}?prefix={request.getfixturevalue('redis_prefix')}"


@pytest.fixture
async def kernel(store: str) -> AsyncIterator[Castor]:
    k = Castor(tools=[search, delete_file], store=store)
    try:
        yield k
    finally:
        await k.close()


@pytest.fixture
async def waiting(kernel: Castor) -> AgentCheckpoint:
    """A run suspended at its destructive call (step 1), with an ``api`` budget."""
    cp = await kernel.run(cleanup, budgets={"api": 10})
    assert cp.status == "SUSPENDED_FOR_HITL"
    return cp


@pytest.fixture
async def backend(store: str) -> AsyncIterator[Backend]:
    b = open_backend(store)
    try:
        yield b
    finally:
        await b.close()


class Client:
    """An HTTP client over the app, with the app's lifespan running (the feed watches the store)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        transport = httpx.ASGITransport(app=app)
        self.http = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8765", follow_redirects=False)

    @property
    def state(self) -> Any:
        return self.app.state.castor


async def open_client(backend: Backend, store: str, users: list[dict[str, Any]] | None = None, **settings: Any
                      ) -> AsyncIterator[Client]:
    """A client over a console on ``backend`` (with the fleet's client on a Redis ``store``)."""
    from castor.backends import _redis_options
    from castor.fleet.client import FleetClient

    fleet = None
    if store.startswith("redis"):
        address, prefix, _ = _redis_options(store)
        fleet = FleetClient(address, prefix)
    app = create_app(backend, ConsoleSection(users=USERS if users is None else users, **settings), fleet=fleet)
    client = Client(app)
    try:
        async with app.router.lifespan_context(app), client.http:
            yield client
    finally:
        if fleet is not None:
            await fleet.close()


@pytest.fixture
async def client(backend: Backend, store: str) -> AsyncIterator[Client]:
    async for c in open_client(backend, store, poll_interval=0.05):
        yield c
