"""``castor mcp --executor celery --config FILE``: an MCP session's calls run on the fleet's worker pools and
its run lives in the config's Redis, where ``castor approve`` (or any process) decides its waiting call."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from castor.backends.redis import redis_backend
from castor.cli import build_parser
from castor.seams import Decision

from .conftest import Fleet

pytest.importorskip("mcp", reason="the MCP gateway needs the mcp extra: pip install -e '.[mcp]'")

from mcp import Client

from castor.mcp.cli import build_gateway
from castor.mcp.server import build_server


def text(result: Any) -> str:
    return "".join(part.text for part in result.content)


async def test_mcp_calls_run_on_their_pools_and_wait_for_a_decision_in_redis(fleet: Fleet) -> None:
    pid, path = f"mcp-{uuid.uuid4().hex[:8]}", f"/tmp/mcp-gone-{uuid.uuid4().hex[:6]}"
    args = build_parser().parse_args(
        ["mcp", "--executor", "celery", "--config", str(fleet.config), "--pid", pid, "--progress-every", "0.1"]
    )
    gateway = build_gateway(args)
    operator = redis_backend(fleet.settings.redis.url, prefix=fleet.prefix)
    try:
        async with Client(build_server(gateway)) as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert tools["delete_file"].annotations.destructive_hint is True
            found = await client.call_tool("search", {"query": "logs"})
            assert '"pool": "web"' in text(found)  # ran on the web pool's worker, not in the gateway
            call = asyncio.create_task(client.call_tool("delete_file", {"path": path}))
            deadline = time.monotonic() + 15
            while not await operator.approvals.pending(pid):
                assert time.monotonic() < deadline, "the destructive call never waited for a decision"
                await asyncio.sleep(0.05)
            assert fleet.count(path, "done") == 0
            waiting = (await operator.approvals.pending(pid))[0]
            await operator.approvals.decide(
                Decision(run_id=pid, step=waiting.step, outcome="approve", by="carol", at=time.time())
            )
            result = await asyncio.wait_for(call, 20)
        assert text(result) == f"deleted {path}"
        assert fleet.count(path, "done") == 1
        assert f"[{pid}:1#" in fleet.log("fs")  # the approved call ran on the fs pool
        assert [r.tool_name for r in await operator.journal.history(pid)] == ["search", "delete_file"]
    finally:
        await gateway.close()
        await operator.close()
