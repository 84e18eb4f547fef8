"""Serving the gateway over stdio or streamable HTTP.

Over HTTP every request must carry ``Authorization: Bearer <token>`` when a token is set; a gateway
bound to anything but loopback refuses to start without one (anyone who reaches the port could call the
tools otherwise). The token is compared in constant time, before the MCP SDK sees the request.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import sys
from typing import Any

from castor.errors import ConfigError
from castor.mcp.gateway import Gateway
from castor.mcp.server import build_server

log = logging.getLogger("castor.mcp")
LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_http(host: str, token: str | None) -> None:
    """Refuse an HTTP gateway that anyone on the network could call."""
    if token is not None and len(token) < 16:
        raise ConfigError(
            "--token must be at least 16 characters (e.g. python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"--host {host} is not loopback: an HTTP gateway reachable from the network needs a bearer token "
            "(--token or CASTOR_MCP_TOKEN)"
        )


class BearerGuard:
    """ASGI middleware: a request without the gateway's bearer token gets 401 and reaches nothing."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or ()).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="castor-mcp"')]})
                await send({"type": "http.response.body", "body": b'{"error": "missing or wrong bearer token"}'})
                return
        await self.app(scope, receive, send)


class CutAtShutdown:
    """ASGI middleware: a request still open when the server stops (a call waiting for a human keeps its
    request open) is cut with one log line, not a traceback: its call stays waiting in the store, and the
    client's retry after the restart finds it. Any other cancellation goes on as it came."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.server: Any = None  # the uvicorn server, once made: whether it is stopping

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if self.server is None or not self.server.should_exit:
                raise
            log.warning("a request still open at shutdown was cut; a call it waited on stays waiting (the "
                        "client's retry finds it)")


async def serve_stdio(gateway: Gateway) -> None:
    """Serve one client on this process's stdin/stdout until it closes them."""
    from mcp.server.stdio import stdio_server

    from castor.mcp.malformed import AnswerMalformed

    server = build_server(gateway)
    try:
        async with stdio_server() as (read, write):
            await server.run(AnswerMalformed(read, write), write, server.create_initialization_options())
    finally:
        await gateway.close()


async def serve_http(gateway: Gateway, host: str, port: int, token: str | None, *, ready: Any = None) -> None:
    """Serve streamable HTTP on ``host:port`` at ``/mcp`` until stopped."""
    import uvicorn

    check_http(host, token)
    server = build_server(gateway)
    app: Any = server.streamable_http_app(host=host)
    if token is not None:
        app = BearerGuard(app, token)
    # A call waiting for a human keeps its request open: on SIGTERM give open requests a few seconds, then
    # stop (the waiting call is in the store; the client's retry finds it).
    cut = CutAtShutdown(app)
    config = uvicorn.Config(cut, host=host, port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=3)
    web = cut.server = uvicorn.Server(config)
    print(f"castor mcp: serving http://{host}:{port}/mcp", file=sys.stderr, flush=True)
    try:
        await web.serve()
    finally:
        await gateway.close()
