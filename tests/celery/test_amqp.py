"""The fleet on RabbitMQ: real ``castor worker`` processes consume from RabbitMQ at 127.0.0.1:5672 (in a
vhost of this module's own, deleted after), Redis holds the state and the reply stream, and the
coordinator publishes with ``send_task``. Calls land on their pools, an approved destructive call runs
once, a worker killed mid-call is redelivered and the idempotent call completes once, a task queued
twice runs once, a connection the broker closes is published on again; a broker that cannot be
reached is a one-line error at worker start and a clean ``BackendUnavailable`` at dispatch.

Without RabbitMQ the fleet tests skip, saying why; under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from castor.fleet.workers._preflight import consumer_timeout_warning

import castor.lib as lib
from castor import BackendUnavailable, Castor, ConfigError
from castor.executors._publish import SendTaskPublisher
from castor.executors.celery import CeleryExecutor, fleet_options
from castor.fleet.celery_config import celery_config
from castor.settings import Settings
from tests.redis_support import free_port

from .checks import (
    Twice,
    fails_cleanly,
    handled_twice,
    refuses_compressed,
    refuses_control_orders,
    survives_poison,
)
from .conftest import ROOT, Fleet, kernel_on, running_fleet

AMQP = os.environ.get("CASTOR_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _unavailable() -> str | None:
    """Why the RabbitMQ tests cannot run here, or None."""
    from kombu import Connection

    try:
        with Connection(f"{AMQP}//", connect_timeout=1) as connection:
            connection.ensure_connection(max_retries=0)
    except Exception as exc:
        return f"no RabbitMQ answers at {AMQP} ({exc}); start it with `rabbitmq-server -detached`"
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed: the RabbitMQ tests make a vhost of their own with it"
    return None


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    """A RabbitMQ vhost of this module's own, guest allowed in; deleted with everything in it after."""
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}: CI must test the RabbitMQ broker")
        pytest.skip(reason)
    name = f"castortest-{uuid.uuid4().hex[:12]}"
    _rabbitmqctl("add_vhost", name)
    try:
        _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        _rabbitmqctl("delete_vhost", name)


@pytest.fixture(scope="module")
def amqp_fleet(vhost: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The Celery tests' two pools, consuming from RabbitMQ."""
    with running_fleet(tmp_path_factory.mktemp("amqp"), broker=f"{AMQP}/{vhost}") as made:
        yield made


@pytest.fixture
async def amqp_kernel(amqp_fleet: Fleet) -> AsyncIterator[Castor]:
    """A coordinator kernel publishing to RabbitMQ."""
    async with kernel_on(amqp_fleet) as k:
        yield k


# --- configuration, no broker needed ---------------------------------------------------------------


def test_the_broker_url_is_checked_and_the_transport_configured() -> None:
    amqp = Settings(broker={"url": "amqp://guest:guest@rabbit:5672/castor"})
    assert amqp.broker_transport == "amqp" and Settings().broker_transport == "redis"
    worker, coordinator = celery_config(amqp), celery_config(amqp, publisher=True)
    # visibility_timeout and the key prefix are kombu-Redis options; RabbitMQ redelivers on its own.
    assert worker["broker_transport_options"] == {}
    assert coordinator["broker_transport_options"] == {"confirm_publish": True}
    assert set(celery_config(Settings())["broker_transport_options"]) == {"visibility_timeout", "global_keyprefix"}
    for bad, why in (("amqqp://h//", "starts with amqqp://"), ("amqp://h:port//", "malformed"),
                     ("unix:///tmp/r.sock", "redis\\+socket://")):
        with pytest.raises(ConfigError, match=why):
            Settings(broker={"url": bad})


def test_a_tool_longer_than_rabbitmqs_consumer_timeout_is_warned_about() -> None:
    short = Settings(broker={"url": "amqp://h//"}, tools={"default_timeout": 60})
    long = Settings(broker={"url": "amqp://h//"}, tools={"default_timeout": 3600, "max_retries": 0})
    assert consumer_timeout_warning(short) is None
    redis = Settings(tools={"default_timeout": 3600})
    assert consumer_timeout_warning(redis) is None  # Redis: visibility_timeout follows
    warning = consumer_timeout_warning(long, {"version": b"3.10.8"})
    assert warning is not None
    assert "RabbitMQ 3.10.8" in warning and "consumer_timeout = 3630000 in rabbitmq.conf" in warning


# --- the fleet on RabbitMQ -------------------------------------------------------------------------


async def test_calls_land_on_both_pools(amqp_fleet: Fleet, amqp_kernel: Castor) -> None:
    executor = amqp_kernel.executor
    assert isinstance(executor, CeleryExecutor) and isinstance(executor._publisher, SendTaskPublisher)

    async def agent() -> list[object]:
        found = await lib.tool("search", query="rabbit")
        return [found, await lib.tool("write_note", name=f"n-{uuid.uuid4().hex[:6]}", content="secret body")]

    cp = await amqp_kernel.run(agent)
    assert cp.status == "COMPLETED", cp.error
    assert cp.result[0] == {"query": "rabbit", "pool": "web"}
    assert cp.result[1]["pool"] == "fs"
    history = await amqp_kernel.backend.journal.history(cp.pid)
    assert [r.tool_name for r in history] == ["search", "write_note"]
    assert "Connected to amqp://" in amqp_fleet.log("fs")
    assert "secret body" not in amqp_fleet.log("fs")


async def test_an_approved_destructive_call_runs_once(amqp_fleet: Fleet, amqp_kernel: Castor) -> None:
    path = f"/tmp/castor-{uuid.uuid4().hex[:6]}"

    async def agent() -> object:
        return await lib.tool("delete_file", path=path)

    cp = await amqp_kernel.run(agent)
    assert cp.status == "SUSPENDED_FOR_HITL"
    assert amqp_fleet.count(path, "done") == 0
    await amqp_kernel.decide(cp, "approve", by="alice")  # runs the approved call
    assert amqp_fleet.count(path, "done") == 1
    resumed = await amqp_kernel.run(agent, checkpoint=await amqp_kernel.aload(cp.pid))
    assert resumed.status == "COMPLETED", resumed.error
    assert resumed.result == f"deleted {path}"
    assert resumed.syscall_log[0].decided_by == "alice"
    assert amqp_fleet.count(path, "done") == 1  # served from the journal on resume


async def test_a_killed_worker_is_redelivered_and_the_idempotent_call_completes_once(
    amqp_fleet: Fleet, amqp_kernel: Castor
) -> None:
    tag = f"copy-{uuid.uuid4().hex[:6]}"

    async def agent() -> object:
        return await lib.tool("slow_copy", tag=tag, seconds=1.0)

    task = asyncio.create_task(amqp_kernel.run(agent))
    os.kill(await asyncio.to_thread(amqp_fleet.running_pid, tag), signal.SIGKILL)
    cp = await asyncio.wait_for(task, 30)
    assert cp.status == "COMPLETED", cp.error
    assert cp.result == f"copied {tag}"
    assert amqp_fleet.count(tag, "start") == 2  # the killed run, then RabbitMQ's redelivery
    assert amqp_fleet.count(tag, "done") == 1
    assert len(await amqp_kernel.backend.journal.history(cp.pid)) == 1


async def test_a_task_published_twice_runs_once(amqp_fleet: Fleet, amqp_kernel: Castor) -> None:
    executor = amqp_kernel.executor
    assert isinstance(executor, CeleryExecutor)
    publisher = executor._publisher
    executor._publisher = Twice(publisher)  # type: ignore[assignment]  # kombu's retry after a lost confirm
    tag = f"twice-{uuid.uuid4().hex[:6]}"

    async def agent() -> object:
        return await lib.tool("slow_write", tag=tag, seconds=0.3)

    try:
        cp = await amqp_kernel.run(agent)
    finally:
        executor._publisher = publisher
    assert cp.status == "COMPLETED", cp.error
    await handled_twice(amqp_fleet, cp.pid)
    assert (amqp_fleet.count(tag, "start"), amqp_fleet.count(tag, "done")) == (1, 1)
    assert await amqp_kernel.backend.journal.failures(cp.pid) == []


@pytest.mark.parametrize(("pool", "task", "tool", "arguments"), [
    ("fs", "castor.tool.write_note", "write_note", {"name": "after-poison", "content": "fine"}),
    ("web", "castor.tool.search", "search", {"query": "after the poison"}),
])
async def test_a_worker_survives_poison(
    amqp_fleet: Fleet, amqp_kernel: Castor, pool: str, task: str, tool: str, arguments: dict[str, object]
) -> None:
    async def agent() -> object:
        return await lib.tool(tool, **arguments)

    await survives_poison(amqp_fleet, amqp_kernel, pool, task, agent)


async def test_forged_control_orders_neither_stop_a_pool_nor_a_call(amqp_fleet: Fleet, amqp_kernel: Castor) -> None:
    await refuses_control_orders(amqp_fleet, amqp_kernel)


async def test_a_compressed_task_is_refused_without_being_inflated(amqp_fleet: Fleet, amqp_kernel: Castor) -> None:
    await refuses_compressed(amqp_fleet, amqp_kernel)


async def test_a_connection_the_broker_closed_is_published_on_again(
    amqp_fleet: Fleet, amqp_kernel: Castor, vhost: str
) -> None:
    async def agent() -> object:
        return await lib.tool("search", query="again")

    assert (await amqp_kernel.run(agent)).status == "COMPLETED"
    publisher = amqp_kernel.executor._publisher  # type: ignore[attr-defined]
    connection = publisher._producer.connection.connection  # py-amqp's, under kombu's
    assert connection.confirm_publish  # a publish waits for RabbitMQ's confirm: a dead connection shows
    port = connection.sock.getsockname()[1]
    listed = _rabbitmqctl("list_connections", "-p", vhost, "pid", "peer_port")
    name = next(line.split("\t")[0] for line in listed.splitlines() if line.endswith(f"\t{port}"))
    _rabbitmqctl("close_connection", name, "castor test: the coordinator's connection goes away")
    cp = await asyncio.wait_for(amqp_kernel.run(agent), 20)
    assert cp.status == "COMPLETED", cp.error
    assert cp.result == {"query": "again", "pool": "web"}


async def test_an_unreachable_broker_fails_the_dispatch_cleanly(amqp_fleet: Fleet) -> None:
    nowhere = f"amqp://guest:s3cret@127.0.0.1:{free_port()}//"
    kernel = Castor(**fleet_options(amqp_fleet.settings.updated(broker={"url": nowhere}), budgets={}))
    try:
        error = await fails_cleanly(kernel, amqp_fleet, r"cannot send 'castor.tool.write_note' to queue '.*\.fs'")
    finally:
        await kernel.close()
    assert type(error) is BackendUnavailable  # kombu's OperationalError stays behind it, as its cause
    assert "the broker at amqp://guest:***@127.0.0.1:" in str(error) and "is unreachable" in str(error)
    assert "s3cret" not in str(error)
    assert type(error.__cause__).__module__.startswith("kombu")


def test_a_worker_says_in_one_line_why_it_cannot_start(amqp_fleet: Fleet, vhost: str, tmp_path: Path) -> None:
    config = amqp_fleet.config.read_text()
    broker = f"{AMQP}/{vhost}"
    cases = {
        "unreachable": (f"amqp://guest:s3cret@127.0.0.1:{free_port()}//", "is unreachable"),
        "vhost": (f"{AMQP}/no-such-vhost-{uuid.uuid4().hex[:6]}", "check the vhost"),
    }
    procs = {}
    for case, (url, _) in cases.items():
        path = tmp_path / f"{case}.toml"
        path.write_text(config.replace(f'url = "{broker}"', f'url = "{url}"'))
        cmd = [sys.executable, "-m", "castor", "worker", "--config", str(path), "--pool", "fs"]
        procs[case] = subprocess.Popen(cmd, cwd=ROOT, env=amqp_fleet.env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    for case, proc in procs.items():
        out, err = proc.communicate(timeout=30)
        url, why = cases[case]
        assert proc.returncode == 1, (case, out, err)
        assert "Traceback" not in err, err
        line = err.strip().splitlines()[-1]
        assert line.startswith("castor: error: cannot start the worker: the broker at amqp://guest:"), line
        assert why in line and "s3cret" not in line


async def test_a_header_nested_near_the_recursion_limit_leaves_a_prefork_pool_serving(
    amqp_fleet: Fleet, amqp_kernel: Castor
) -> None:
    from .test_poison import deep_headers, flooded_then_serving

    await flooded_then_serving(amqp_fleet, amqp_kernel, deep_headers(amqp_fleet),
                               "a header nests lists and objects deeper than 100 levels")
