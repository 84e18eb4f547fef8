"""A stdio client's malformed line gets JSON-RPC's error, not silence.

The MCP SDK's stdio transport hands the server a line it cannot read as a JSON-RPC message (not JSON, JSON
nested deeper than its parser goes, a request whose ``method`` is no string) as an exception, and the
server drops it: the client waits for its own timeout, never told why. JSON-RPC 2.0 says such a line gets
an answer: ``-32700 Parse error`` when it is not JSON, ``-32600 Invalid Request`` when it is JSON but no
message, with the request's ``id`` where one can be read (else ``null``). ``AnswerMalformed`` stands
between the transport and the server and writes that answer; every well-formed message passes through.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

import anyio
from mcp.shared.message import SessionMessage
from mcp_types import ErrorData, JSONRPCError
from pydantic import ValidationError

log = logging.getLogger("castor.mcp")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600


def error_for(exc: Exception) -> JSONRPCError:
    """The JSON-RPC error answering the line the transport could not read (``exc``, its exception)."""
    if not isinstance(exc, ValidationError):
        return _error(None, PARSE_ERROR, f"Parse error: {exc}")
    errors = exc.errors(include_url=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return _error(None, PARSE_ERROR, f"Parse error: {errors[0]['msg']}")
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"][1:]) or "the message"
    return _error(_request_id(errors), INVALID_REQUEST, f"Invalid Request: {where}: {first['msg']}")


def _request_id(errors: list[Any]) -> int | str | None:
    """The ``id`` of the message, read from the top-level object pydantic reports a missing field of."""
    for e in errors:
        # A missing field's input is the object that lacks it: at depth 2 (message kind, field), the line's.
        top = e["input"] if e["type"] == "missing" and len(e["loc"]) == 2 else None
        if isinstance(top, dict):
            rid = top.get("id")
            if isinstance(rid, str) or (isinstance(rid, int) and not isinstance(rid, bool)):
                return rid
            return None
    return None


def _error(rid: int | str | None, code: int, message: str) -> JSONRPCError:
    # id set even when None: the transport writes set fields only, and JSON-RPC wants "id": null there.
    return JSONRPCError(jsonrpc="2.0", id=rid, error=ErrorData(code=code, message=message[:500]))


class AnswerMalformed:
    """The server's read stream: messages pass; a line the transport could not read is answered on
    ``write`` with its JSON-RPC error (``error_for``) and skipped."""

    def __init__(self, read: Any, write: Any) -> None:
        self._read = read
        self._write = write

    def __getattr__(self, name: str) -> Any:
        return getattr(self._read, name)  # the SDK reads the sender's context (``last_context``) off the stream

    async def receive(self) -> SessionMessage:
        """The next well-formed message, answering the malformed lines before it."""
        while True:
            item = await self._read.receive()
            if not isinstance(item, Exception):
                return item
            answer = error_for(item)
            log.warning("a line from the client is no JSON-RPC message: answered %s (%s)",
                        answer.error.code, answer.error.message)
            await self._write.send(SessionMessage(answer))

    def __aiter__(self) -> AnswerMalformed:
        return self

    async def __anext__(self) -> SessionMessage:
        try:
            return await self.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Close the transport's read stream."""
        await self._read.aclose()

    async def __aenter__(self) -> AnswerMalformed:
        await self._read.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return await self._read.__aexit__(exc_type, exc, tb)
