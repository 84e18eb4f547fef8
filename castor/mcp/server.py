"""The MCP side of the gateway: ``tools/list`` and ``tools/call`` on the MCP SDK's low-level server.

The low-level ``mcp.server.lowlevel.Server`` (not FastMCP) because the gateway lists tools it did not
define as Python functions: their schemas come from Castor's argument schemas and their annotations
from Castor's declarations (``destructiveHint``), and a call must stay open while it waits for a human,
sending progress notifications on the request itself. FastMCP would rebuild schemas from signatures
and validate arguments itself, before Castor could charge, gate and journal the call.
"""

from __future__ import annotations

import json
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server

from castor.errors import CastorError
from castor.mcp.gateway import KEY_ARGUMENT, KEY_META, RUN_META, Gateway
from castor.mcp.session import Outcome

STATUS_TOOL = "castor_status"
DECIDE_TOOL = "castor_decide"
INSTRUCTIONS = (
    "Every tool call goes through Castor: it is validated, charged to the session's budget, journaled, and "
    "a destructive call waits for a human's approval (the call stays open and reports progress). "
    f"Results carry the run's pid in _meta[{RUN_META!r}]; send it back in a call's _meta to continue that run "
    f"after a reconnect, with _meta[{KEY_META!r}] so that a retried call runs at most once."
)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _meta(outcome: Outcome) -> dict[str, Any]:
    meta: dict[str, Any] = {RUN_META: outcome.pid, "castor/step": outcome.step}
    if outcome.needs_review:
        meta["castor/needs_review"] = True
    return meta


def _error(text: str, meta: dict[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True, _meta=meta)


def to_result(name: str, outcome: Outcome) -> types.CallToolResult:
    """The kernel's answer as MCP content: a value, or a denial as error content saying why."""
    meta = _meta(outcome)
    if outcome.error is not None:
        return _error(outcome.error, meta)
    result = outcome.result
    if result is None:  # an Outcome holds an error or a result
        return _error("no result", meta)
    if result.ok:
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=_text(result.value))], is_error=False, _meta=meta
        )
    if result.invalid:
        feedback = str(result.feedback)  # the schema's message names the tool already
        text = feedback if feedback.startswith("invalid arguments") else f"invalid arguments for {name}: {feedback}"
    elif result.exhausted:
        text = f"budget exhausted: {result.feedback}"
    elif result.rejected:
        text = f"rejected by a human: {result.feedback}"
    else:
        text = f"not run; a human answered instead: {result.feedback}"
    return _error(text, {**meta, "castor/status": result.status})


def _transport_session(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """The HTTP session id, when the transport has one (stdio's connection is the gateway's ``--pid``)."""
    request = ctx.request
    headers = getattr(request, "headers", None)
    if headers is not None:
        return headers.get("mcp-session-id")
    return None


def build_server(gateway: Gateway) -> Server[Any]:
    """The MCP server over ``gateway``."""

    async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
        listed = [
            types.Tool(
                name=info.name, description=info.description, input_schema=info.schema,
                annotations=types.ToolAnnotations(
                    destructive_hint=info.destructive, read_only_hint=False, idempotent_hint=info.idempotent,
                ),
            )
            for info in gateway.tools
        ]
        listed.append(types.Tool(
            name=STATUS_TOOL, description="This session's Castor run: pid, status, steps, what the budgets have left.",
            input_schema={"type": "object", "properties": {}, "additionalProperties": False},
            annotations=types.ToolAnnotations(read_only_hint=True, destructive_hint=False),
        ))
        if gateway.client_may_decide:  # development only: the guarded model could approve its own calls
            listed.append(types.Tool(
                name=DECIDE_TOOL, description="DEVELOPMENT ONLY: decide the call this run waits on.",
                input_schema={"type": "object", "required": ["decision"], "properties": {
                    "decision": {"enum": ["approve", "reject", "modify"]}, "reason": {"type": "string"},
                    "run": {"type": "string"}}},
            ))
        return types.ListToolsResult(tools=listed)

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        try:
            return await dispatch(ctx, params)
        except (CastorError, ValueError) as exc:  # a bad pid, a decision refused: the client's error, one line
            return _error(f"{type(exc).__name__}: {exc}")

    async def dispatch(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        meta = dict(ctx.meta or {})
        session_id = _transport_session(ctx)
        arguments = dict(params.arguments or {})
        if params.name == STATUS_TOOL:
            pid = gateway.pid_for(meta, session_id)
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=_text(await gateway.status(pid)))], _meta={RUN_META: pid}
            )
        if params.name == DECIDE_TOOL and gateway.client_may_decide:
            pid = str(arguments.get("run") or gateway.pid_for(meta, session_id))
            said = await gateway.decide(pid, str(arguments.get("decision")), str(arguments.get("reason") or ""))
            return types.CallToolResult(content=[types.TextContent(type="text", text=said)])
        if params.name not in gateway.kernel.tools:
            served = ", ".join(gateway.kernel.tools.names())
            return _error(f"unknown tool {params.name!r}; the gateway serves: {served}")

        async def progress(waited: float, message: str) -> None:
            await ctx.session.report_progress(waited, None, message)

        outcome = await gateway.call(params.name, arguments, meta, session_id, progress)
        return to_result(params.name, outcome)

    instructions = INSTRUCTIONS
    if gateway.default_pid:  # a stdio connection's run is known before the first call: say it up front
        instructions += f" This connection's Castor run is {gateway.default_pid}."
    return Server(
        "castor", version=_version(), instructions=instructions, on_list_tools=list_tools, on_call_tool=call_tool,
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("castor-kernel")
    except PackageNotFoundError:
        return "0"


__all__ = ["KEY_ARGUMENT", "build_server", "to_result"]
