"""How much a request may send the console: its body is capped before any handler reads it.

Every body the console takes is small (a decision's reason, a fork's step, a sign-in form), yet Starlette
reads a body whole into memory, and the sign-in form is read before anyone is signed in: without a cap,
anyone who reaches the port could make the process hold gigabytes. ``BodyLimit`` counts the bytes as the
server hands them over and stops the request at ``MAX_BODY_BYTES`` with 413, whether or not the client
said a ``Content-Length``.
"""

from __future__ import annotations

from typing import Any

from castor.console.auth import Denied

MAX_BODY_BYTES = 1024 * 1024  # a reason or a feedback of a megabyte is already more than anyone reads


class BodyLimit:
    """ASGI middleware: a request whose body passes ``limit`` bytes raises ``Denied(413)`` in the handler
    that reads it (the console's error handler answers it); a declared ``Content-Length`` above it is
    refused before the body is read at all."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve ``scope`` with a ``receive`` that counts the body's bytes."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await _too_large(send, self.limit)
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise Denied(413, f"the request's body is larger than {self.limit:,} bytes")
            return message

        await self.app(scope, counted, send)


async def _too_large(send: Any, limit: int) -> None:
    body = f'{{"error": "the request\'s body is larger than {limit:,} bytes"}}'.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
