"""Flower on the fleet: its HTTP API lists our tasks by readable name, with run id and step, and
redacts the arguments a tool marks sensitive; a failed call is a FAILURE there (type and redacted message),
a refused task REJECTED with its reason, and a result shows as a short redacted summary."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import castor.lib as lib
from castor import Castor, RemoteToolError
from tests.ports import free_port

from .conftest import ROOT, Fleet, stop_process
from .test_forgery import forged


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


@contextlib.contextmanager
def flower_process(config: Path, env: dict[str, str], log: Path | None = None) -> Iterator[str]:
    """``castor flower`` on ``config``: its base URL once its API answers; stopped after."""
    port = free_port()
    cmd = [sys.executable, "-m", "castor.fleet.workers", "flower", "--config", str(config), "--port", str(port)]
    with (log or Path(os.devnull)).open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                _get(f"{base}/api/tasks")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(f"Flower did not start: {log.read_text() if log else ''}") from None
                time.sleep(0.1)
        yield base
    finally:
        stop_process(proc)


@pytest.fixture
def flower(fleet: Fleet) -> Iterator[str]:
    """Flower on the fleet's broker: its base URL once its API answers."""
    with flower_process(fleet.config, fleet.env) as base:
        yield base


async def test_flower_lists_tasks_by_tool_name(flower: str, kernel: Castor) -> None:
    await _wait_until_flower_sees_events(flower, kernel)
    secret = f"s3cret-{uuid.uuid4().hex[:6]}"

    async def agent() -> object:
        await lib.tool("search", query="flower")
        return await lib.tool("write_note", name="flower", content=secret)

    cp = await kernel.run(agent)
    assert cp.status == "COMPLETED"
    mine, tasks = await _listed(flower, cp.pid, 2, timeout=15)
    assert set(mine) == {"castor.tool.search", "castor.tool.write_note"}
    note = mine["castor.tool.write_note"]
    assert "'step': 1" in str(note["kwargs"])
    assert secret not in json.dumps(tasks)
    assert "'content': '***'" in str(note["kwargs"])


async def _settled(base: str, pid: str, name: str, states: set[str], timeout: float = 15) -> dict[str, object]:
    """Flower's task ``name`` of run ``pid`` once its state is one of ``states``."""
    deadline = time.monotonic() + timeout
    task: dict[str, object] = {}
    while time.monotonic() < deadline:
        task = (await _listed(base, pid, 1, timeout=1))[0].get(name, {})
        if task.get("state") in states:
            return task
        await asyncio.sleep(0.1)
    raise AssertionError(f"Flower shows {name} of {pid} as {task.get('state')!r}, not one of {states}: {task}")


async def test_flower_tells_failures_refusals_and_results(flower: str, fleet: Fleet, kernel: Castor) -> None:
    await _wait_until_flower_sees_events(flower, kernel)
    password = f"pw-{uuid.uuid4().hex[:8]}"

    async def fails() -> object:
        return await lib.tool("leaky_login", user="ana", password=password)

    with pytest.raises(RemoteToolError) as info:
        await kernel.run(fails)
    assert info.value.error_type == "PermissionError"  # the coordinator receives what it always did
    pid = next(p for p, cp in kernel.live.items() if cp.status == "FAILED")
    failures = await kernel.backend.journal.failures(pid)
    assert [(f.error_type, f.message) for f in failures] == [
        ("PermissionError", f"login of ana with password {password} refused")  # journaled as before
    ]
    failed = await _settled(flower, pid, "castor.tool.leaky_login", {"FAILURE"})
    assert "PermissionError: login of ana with password *** refused" in str(failed["exception"])
    assert password not in json.dumps(_get(f"{flower}/api/tasks"))

    async def works() -> object:
        return await lib.tool("search", query="summary")

    cp = await kernel.run(works)
    done = await _settled(flower, cp.pid, "castor.tool.search", {"SUCCESS"})
    assert str(done["result"]).strip("'\"").startswith('ok: {"query": "summary"')

    # A task without the coordinator's token: refused, and Flower says so with the reason.
    from celery import Celery

    from castor.fleet.celery_config import celery_config

    forger = Celery("forger", set_as_current=False)
    forger.conf.update(celery_config(fleet.settings))
    forged_pid = f"forged-{uuid.uuid4().hex[:6]}"
    kwargs = forged(forged_pid, 0, "search", {"query": "x"}, "")  # a well-formed call, without the token
    try:
        forger.send_task("castor.tool.search", kwargs=kwargs, queue=fleet.settings.queue_of("web"))
    finally:
        forger.close()
    refused = await _settled(flower, forged_pid, "castor.tool.search", {"REJECTED", "FAILURE"})
    assert "TaskRefused(" in str(refused["exception"]) and "token" in str(refused["exception"]), refused


async def test_flower_lists_a_poison_message_as_rejected(flower: str, fleet: Fleet, kernel: Castor) -> None:
    await _wait_until_flower_sees_events(flower, kernel)
    from .checks import send_poison

    send_poison(fleet, "web", "castor.tool.search")
    deadline = time.monotonic() + 15
    rejected: list[dict[str, object]] = []
    while time.monotonic() < deadline and not rejected:
        tasks = _get(f"{flower}/api/tasks")
        assert isinstance(tasks, dict)
        rejected = [t for t in tasks.values() if str(t.get("uuid")).startswith("poison-")
                    and t.get("state") == "REJECTED" and "not [args, kwargs, embed]" in str(t.get("exception"))]
        await asyncio.sleep(0.1)
    assert rejected, "Flower lists no poison message as REJECTED with its reason"


async def test_forged_events_do_not_blind_flower(flower: str, fleet: Fleet, kernel: Castor) -> None:
    """Anyone who can write to the broker can publish task events. One Flower could not take (no object, no
    type, a timestamp that is no number) raised out of Celery's receiver and Flower saw nothing for a
    second or more; one a tenth of a second kept it blind. Now such an event is dropped alone."""
    from celery import Celery
    from celery.events.event import get_exchange

    from castor.fleet.celery_config import celery_config

    await _wait_until_flower_sees_events(flower, kernel)
    stop = threading.Event()
    forged_events: list[object] = [
        "not an event", {"no": "type"}, [{"type": "task-succeeded", "uuid": "x", "timestamp": "soon", "utcoffset": 0}],
    ]

    def forge() -> None:
        app = Celery("forger", set_as_current=False)
        app.conf.update(celery_config(fleet.settings))
        try:
            with app.connection_for_write() as connection:
                exchange = get_exchange(connection, name=app.conf.event_exchange)
                producer = connection.Producer()
                while not stop.is_set():
                    for body in forged_events:
                        producer.publish(body, exchange=exchange, routing_key="task.succeeded", declare=[exchange],
                                         serializer="json")
                    stop.wait(0.1)
        finally:
            app.close()

    forger = threading.Thread(target=forge)
    forger.start()
    try:
        await asyncio.sleep(0.5)  # the forged events flow before and while the call runs

        async def agent() -> object:
            return await lib.tool("search", query=f"under forged events {uuid.uuid4().hex[:6]}")

        cp = await kernel.run(agent)
        assert cp.status == "COMPLETED", cp.error
        mine, _ = await _listed(flower, cp.pid, 1, timeout=10)
        assert "castor.tool.search" in mine, "Flower saw nothing of a genuine call among forged events"
    finally:
        stop.set()
        forger.join(10)
