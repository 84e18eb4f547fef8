"""What the HTTP providers share: one ``httpx.AsyncClient``, error mapping, server-sent events.

Imported only by ``castor.llm.openai`` and ``castor.llm.anthropic``, which ``castor.llm`` loads on first
use: ``import castor`` never imports httpx.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

from castor.llm.types import MalformedResponseError, ModelCallError, ModelTimeoutError, ProviderHTTPError

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ModelCallError(
        "the HTTP model providers need httpx: pip install 'castor-kernel[openai]' (or [anthropic])"
    ) from exc


def api_key(given: str | None, env: str, who: str, required: bool) -> str:
    """The key given, else the environment's; a clear error if a key is required and there is none."""
    key = given if given is not None else os.environ.get(env, "")
    if required and not key:
        raise ModelCallError(f"{who}: no API key: pass api_key=... or set {env}")
    return key


class HTTPProvider:
    """An httpx client made on first use (or given, e.g. with a mock transport in tests)."""

    name = "provider"

    def __init__(self, base_url: str, headers: Mapping[str, str], timeout: float, client: Any = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers)
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = client

    @property
    def client(self) -> httpx.AsyncClient:
        """The HTTP client (one per provider, kept open for its connections)."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        return self._client

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` as JSON; the JSON answer, or ``ProviderHTTPError`` / ``ModelTimeoutError``."""
        try:
            reply = await self.client.post(self.base_url + path, json=body, headers=self.headers)
        except httpx.TimeoutException as exc:
            raise ModelTimeoutError(f"{self.name} at {self.base_url} did not answer in {self.timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise ModelCallError(f"{self.name} at {self.base_url} unreachable: {exc}") from exc
        self._check(reply, reply.text)
        try:
            data = reply.json()
        except ValueError as exc:
            raise ModelCallError(f"{self.name} answered something that is not JSON: {reply.text[:200]!r}") from exc
        if not isinstance(data, dict):
            raise ModelCallError(f"{self.name} answered JSON that is not an object: {reply.text[:200]!r}")
        return data

    async def events(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POST ``body`` and yield the JSON of each server-sent event (``data: ...``) until ``[DONE]``."""
        try:
            async with self.client.stream("POST", self.base_url + path, json=body, headers=self.headers) as reply:
                if reply.status_code >= 400:
                    self._check(reply, (await reply.aread()).decode(errors="replace"))
                async for line in reply.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        yield json.loads(data)
                    except ValueError as exc:
                        raise ModelCallError(f"{self.name} streamed an event that is not JSON: {data[:200]!r}") from exc
        except httpx.TimeoutException as exc:
            raise ModelTimeoutError(f"{self.name} at {self.base_url} stopped answering for {self.timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise ModelCallError(f"{self.name} stream from {self.base_url} broke: {exc}") from exc

    def _check(self, reply: httpx.Response, text: str) -> None:
        if reply.status_code < 400:
            return
        retry = reply.headers.get("retry-after")
        try:
            retry_after = float(retry) if retry is not None else None
        except ValueError:
            retry_after = None
        raise ProviderHTTPError(
            f"{self.name} answered HTTP {reply.status_code}: {text[:300]}", reply.status_code, retry_after
        )

    async def aclose(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def json_arguments(raw: Any, tool: str, response: dict[str, Any], who: str) -> dict[str, Any]:
    """A tool call's arguments from the JSON text a model wrote; ``MalformedResponseError`` if it is not an object."""
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, dict):
        raise MalformedResponseError(
            f"{who} returned a malformed call of tool {tool!r}: its arguments are not a JSON object: "
            f"{str(raw)[:200]!r}",
            response,
        )
    return value
