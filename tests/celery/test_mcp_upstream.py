"""Another MCP server's tools on a worker pool: a config imports the server (``upstream_tools.py:files``) and
routes all its tools to one pool by that name; a real worker process starts the server and runs the calls,
the approved destructive one once, and the coordinator's kernel (which only lists the server's tools)
never calls it. A server that dies during a call puts the step in doubt, on the pool as embedded."""

from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path

import redis

import castor.lib as lib
from castor import Castor
from castor.executors.celery import fleet_options
from castor.settings import load_settings
from tests.mcp.test_upstream import ran

from .conftest import REDIS_URL, ROOT, spawn_worker, stop_process, wait_ready

UPSTREAM_TOOLS = ROOT / "tests" / "mcp" / "upstream_tools.py"

CONFIG = """
[redis]
url = "{redis}"
prefix = "{prefix}"

[broker]
url = "{redis}"
queue_prefix = "{queues}"

[security]
secret = "{secret}"

[tools]
import = ["{tools}:files"]

[pools]
mcp = ["files"]
"""


async def cleanup() -> list[object]:
    found = await lib.tool("search", query="old")
    gone = await lib.tool("delete_file", path=found[0])
    return [found, gone]


async def vanishing() -> object:
    return await lib.tool("vanish")


async def test_an_mcp_servers_tools_run_on_the_pool_that_names_it(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:12]
    prefix, queues = f"castortest-{tag}", f"castortestq-{tag}"
    config = tmp_path / "castor.toml"
    config.write_text(CONFIG.format(redis=REDIS_URL, prefix=prefix, queues=queues, secret=secrets.token_hex(32),
                                    tools=UPSTREAM_TOOLS))
    log = tmp_path / "upstream.log"  # what the worker's server ran (the test's own server logs nowhere)
    env = {**os.environ, "UPSTREAM_LOG": str(log), "PYTHONPATH": str(ROOT)}
    for var in ("CASTOR_REDIS_URL", "CASTOR_BROKER_URL", "CASTOR_SECRET"):
        env.pop(var, None)
    worker = spawn_worker(config, "mcp", "threads", 2, env, tmp_path / "worker.log")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        wait_ready(worker, "mcp", tmp_path / "worker.log")
        settings = load_settings(config, env={})
        assert {settings.pool_of(name, "files") for name in ("search", "delete_file")} == {"mcp"}
        kernel = Castor(**fleet_options(settings, budgets={}))
        try:
            waiting = await kernel.run(cleanup, pid=f"mcp-{tag}")
            assert waiting.status == "SUSPENDED_FOR_HITL" and waiting.pending_tool == "delete_file"
            assert ran(log, "search") == [{"query": "old", "limit": 2}]  # on the worker's server
            await kernel.approve(waiting)
            done = await kernel.run(cleanup, checkpoint=waiting)
        finally:
            await kernel.close()
        assert done.status == "COMPLETED" and done.result[1] == "deleted /data/old-0.log", done.result
        assert ran(log, "delete_file") == [{"path": "/data/old-0.log"}] and len(ran(log, "search")) == 1

        # The worker's server dies during a call that may not run twice: in doubt, a human decides.
        kernel = Castor(**fleet_options(settings, budgets={}))
        try:
            doubt = await kernel.run(vanishing, pid=f"doubt-{tag}")
            assert doubt.status == "SUSPENDED_FOR_HITL" and "in doubt" in (doubt.pending_reason or ""), doubt.error
            await kernel.approve(doubt)
            back = await kernel.run(vanishing, checkpoint=doubt)
        finally:
            await kernel.close()
        assert back.status == "COMPLETED" and back.result == "back" and len(ran(log, "vanish")) == 2
    finally:
        stop_process(worker)
        for pattern in (f"{prefix}*", f"{queues}*"):
            found = list(client.scan_iter(match=pattern, count=1000))
            if found:
                client.delete(*found)
        client.close()
