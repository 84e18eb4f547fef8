"""Flower on the fleet: its HTTP API lists our tasks by readable name, with run id and step, and
redacts the arguments a tool marks sensitive."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import castor.lib as lib
from castor import Castor

from .conftest import ROOT, Fleet, stop_process


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> object:
    auth = "Basic " + base64.b64encode(b"castor:test").decode()
    request = urllib.request.Request(url, headers={"Authorization": auth})
    with urllib.request.urlopen(request, timeout=2) as response:
        return json.loads(response.read())


async def _listed(base: str, pid: str, count: int, timeout: float) -> tuple[dict[str, dict[str, object]], object]:
    """The tasks of run ``pid`` Flower lists, by name, once there are ``count`` (or ``timeout`` ran out)."""
    mine: dict[str, dict[str, object]] = {}
    tasks: object = {}
    deadline = time.monotonic() + timeout
    while len(mine) < count and time.monotonic() < deadline:
        tasks = _get(f"{base}/api/tasks")
        assert isinstance(tasks, dict)
        mine = {t["name"]: t for t in tasks.values() if pid in str(t.get("kwargs"))}
        await asyncio.sleep(0.1)
    return mine, tasks


async def _wait_until_flower_sees_events(base: str, kernel: Castor, timeout: float = 30) -> None:
    """Flower subscribes to the task events some time after its HTTP server answers (longer on a loaded
    machine); events sent before are lost to it. Probe until a probe's task shows up."""

    async def probe() -> object:
        return await lib.tool("search", query="probe")

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cp = await kernel.run(probe)
        if (await _listed(base, cp.pid, 1, timeout=2))[0]:
            return
    raise AssertionError("Flower listed no task of the probes")


async def test_flower_lists_tasks_by_tool_name(fleet: Fleet, kernel: Castor, tmp_path: object) -> None:
    port = _free_port()
    cmd = [sys.executable, "-m", "castor.fleet.workers", "flower", "--config", str(fleet.config), "--port", str(port)]
    flower = subprocess.Popen(cmd, cwd=ROOT, env=fleet.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                _get(f"{base}/api/tasks")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or flower.poll() is not None:
                    raise AssertionError("Flower did not start") from None
                time.sleep(0.1)
        await _wait_until_flower_sees_events(base, kernel)
        secret = f"s3cret-{uuid.uuid4().hex[:6]}"

        async def agent() -> object:
            await lib.tool("search", query="flower")
            return await lib.tool("write_note", name="flower", content=secret)

        cp = await kernel.run(agent)
        assert cp.status == "COMPLETED"
        mine, tasks = await _listed(base, cp.pid, 2, timeout=15)
        assert set(mine) == {"castor.tool.search", "castor.tool.write_note"}
        note = mine["castor.tool.write_note"]
        assert "'step': 1" in str(note["kwargs"])
        assert secret not in json.dumps(tasks)
        assert "'content': '***'" in str(note["kwargs"])
    finally:
        stop_process(flower)
