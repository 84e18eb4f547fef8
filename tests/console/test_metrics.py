"""The console's metrics: the decisions recorded through it, by decision, and how long each call waited
for it; over the ASGI app here, and on the real ``/metrics`` of a live ``castor console --metrics-port``
in ``test_a_live_console_serves_its_decisions_on_metrics``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families

import castor.metrics
from castor import Castor
from castor.checkpoint import AgentCheckpoint
from castor.metrics.services import instrument_console
from tests.console.conftest import Client, auth, cleanup, delete_file, search
from tests.redis_support import free_port

ROOT = Path(__file__).resolve().parents[2]
DECISIONS = ("approve", "reject", "modify")


def counted() -> dict[str, float]:
    """This process's console counters and histogram counts, by decision."""
    registry = castor.metrics.instruments().registry
    got = {}
    for decision in DECISIONS:
        got[decision] = registry.get_sample_value("castor_console_decisions_total", {"decision": decision}) or 0.0
        got[f"{decision} timed"] = registry.get_sample_value(
            "castor_console_decision_seconds_count", {"decision": decision}) or 0.0
    return got


async def test_the_console_counts_and_times_only_the_decisions_it_records(
    client: Client, waiting: AgentCheckpoint, kernel: Castor
) -> None:
    instrument_console(client.state.console)
    before = counted()
    approved = await client.http.post(f"/api/runs/{waiting.pid}/approve", json={}, headers=auth("alice"))
    assert approved.status_code == 200, approved.text
    again = await client.http.post(f"/api/runs/{waiting.pid}/reject", json={"reason": "late"}, headers=auth("carol"))
    assert again.status_code == 409  # decided already: nothing recorded, nothing counted
    other = await kernel.run(cleanup, budgets={"api": 10})
    rejected = await client.http.post(f"/api/runs/{other.pid}/reject", json={"reason": "no"}, headers=auth("alice"))
    assert rejected.status_code == 200, rejected.text
    after = counted()
    assert {k: after[k] - before[k] for k in after} == {
        "approve": 1, "approve timed": 1, "reject": 1, "reject timed": 1, "modify": 0, "modify timed": 0,
    }


def scrape(port: int) -> dict[str, float]:
    """The endpoint's samples: ``name{label=value,...}`` -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {s.name + json.dumps(s.labels, sort_keys=True): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def post(url: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def waiting_runs(db: Path, n: int) -> list[str]:
    kernel = Castor(tools=[search, delete_file], store=f"sqlite:///{db}")
    try:
        return [(await kernel.run(cleanup, budgets={"api": 10})).pid for _ in range(n)]
    finally:
        await kernel.close()


@pytest.mark.fleet
def test_a_live_console_serves_its_decisions_on_metrics(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    started = time.time()
    approve, modify, reject = asyncio.run(waiting_runs(db, 3))
    port, metrics = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("CASTOR_STORE", "CASTOR_REDIS_URL", "CASTOR_CONFIG", "CASTOR_CONSOLE_TOKEN")}
    log = (tmp_path / "console.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "castor", "console", "--db", str(db), "--port", str(port),
         "--metrics-port", str(metrics)],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while f"metrics on port {metrics}" not in (tmp_path / "console.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "console.log").read_text()
            time.sleep(0.1)
        zero = scrape(metrics)
        assert [zero[f'castor_console_decisions_total{{"decision": "{d}"}}'] for d in DECISIONS] == [0, 0, 0]
        assert "castor_fleet_up{}" not in zero  # a SQLite store: no fleet to read gauges from
        api = f"http://127.0.0.1:{port}/api/runs"
        while True:  # the console answers HTTP a moment after it printed its address
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert post(f"{api}/{approve}/approve", {}) == 200
        assert post(f"{api}/{approve}/approve", {}) == 409  # the first decision wins; not counted again
        assert post(f"{api}/{modify}/modify", {"feedback": "only /tmp/old2"}) == 200
        assert post(f"{api}/{reject}/reject", {"reason": "keep it"}) == 200
        got = scrape(metrics)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    for decision in DECISIONS:
        labels = json.dumps({"decision": decision})
        assert got[f"castor_console_decisions_total{labels}"] == 1
        assert got[f"castor_console_decision_seconds_count{labels}"] == 1
        waited = got[f"castor_console_decision_seconds_sum{labels}"]
        assert 0 < waited <= time.time() - started  # from its request to its decision
        assert got[f'castor_console_decision_seconds_bucket{{"decision": "{decision}", "le": "5.0"}}'] == 1
    assert not any(pid in key for key in got for pid in (approve, modify, reject))  # no pid is ever a label
    assert "Traceback" not in (tmp_path / "console.log").read_text()
