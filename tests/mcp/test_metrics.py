"""``castor mcp --metrics-port``: the real ``/metrics`` of a live stdio gateway driven by the MCP SDK's own
client. Its kernel counts syscalls as a coordinator's does (tool, pool ``local``: the tools run in the
gateway; outcome), replayed steps when a session's run is driven again after a decision, and the
human's time to decision; no pid or argument is ever a label."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families

from tests.mcp.test_processes import Waiting, castor, stdio, text
from tests.redis_support import free_port

pytestmark = pytest.mark.fleet


def scrape(port: int) -> dict[str, float]:
    """The endpoint's samples: ``name{label=value,...}`` (labels sorted) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        body = reply.read().decode()
    return {s.name + json.dumps(s.labels, sort_keys=True): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def syscalls(got: dict[str, float], tool: str, outcome: str) -> float:
    return got.get(f"castor_syscalls_total{json.dumps({'outcome': outcome, 'pool': 'local', 'tool': tool})}", 0)


async def test_a_live_stdio_gateway_counts_its_syscalls_on_metrics(tmp_path: Path) -> None:
    db, log, port = tmp_path / "gateway.db", tmp_path / "appended.log", free_port()
    async with stdio(db, log, "--pid", "metered", "--metrics-port", str(port)) as client:
        before = await asyncio.to_thread(scrape, port)  # served once the gateway answers the client
        assert syscalls(before, "add", "ok") == 0 and "castor_fleet_up{}" not in before  # no fleet: no gauges
        for a in range(3):
            assert text(await client.call_tool("add", {"a": a, "b": 1})) == str(a + 1)
        assert (await client.call_tool("add", {"a": 1})).is_error  # invalid: b is missing
        waiting = Waiting()
        call = asyncio.create_task(client.call_tool("append_line", {"text": "x"}, progress_callback=waiting))
        await waiting.wait()
        await castor("approve", "metered", "--db", str(db), "--as", "bob")
        assert text(await call) == "appended x"
        got = await asyncio.to_thread(scrape, port)
    assert syscalls(got, "add", "ok") == 3
    assert syscalls(got, "add", "validation_error") == 1
    assert syscalls(got, "append_line", "suspended") == 1  # it waited for the human ...
    assert syscalls(got, "append_line", "ok") == 1  # ... and ran once, when the run was driven again
    assert got['castor_syscall_seconds_count{"pool": "local", "tool": "add"}'] == 4
    # The new drive replays the journal: the four add steps, the refused one too (its answer is journaled).
    assert got['castor_replayed_steps_total{"tool": "add"}'] == 4
    decided = '{"decision": "approve", "tool": "append_line"}'
    assert got[f"castor_approval_decision_seconds_count{decided}"] == 1
    assert got[f"castor_approval_decision_seconds_sum{decided}"] > 0
    for key in got:
        assert "metered" not in key and '"x"' not in key, key  # neither the pid nor an argument is a label
