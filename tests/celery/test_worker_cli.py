"""``castor worker`` as a real process: without a config (its tools from ``--tools``, its Redis from
``--redis``), the Celery config it runs with, and the one-line errors of a config it cannot start on."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import castor.lib as lib
from castor import Castor
from castor.cli import main
from castor.executors.celery import fleet_options
from castor.fleet.celery_config import celery_config
from castor.settings import REPLY_GRACE, Settings

from .conftest import REDIS_URL, stop_process, wait_ready

SECRET = secrets.token_hex(32)

TOOLS = '''
from castor import castor_tool


def echo(text: str) -> dict:
    return {"echo": text}


@castor_tool(timeout_seconds=3600)
def long_export(table: str) -> str:
    return table
'''


def clean_env() -> dict[str, str]:
    """The test's environment without the variables that would give the worker a config or a Redis, with
    the fleet's secret (no worker starts without one)."""
    env = dict(os.environ)
    for var in ("CASTOR_CONFIG", "CASTOR_REDIS_URL", "CASTOR_BROKER_URL", "CASTOR_STORE", "CASTOR_INSECURE_DEV"):
        env.pop(var, None)
    env["CASTOR_SECRET"] = SECRET
    return env


@pytest.fixture(scope="module")
def unconfigured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, subprocess.Popen[bytes], Path]]:
    """``castor worker --pool P --tools tools.py:echo,tools.py:long_export`` in a directory with no config,
    its state under a private prefix (``--redis URL?prefix=``) and its queue its pool's own: (pool, prefix,
    directory). The broker keys of its queue and the state under the prefix are deleted after."""
    tmp_path = tmp_path_factory.mktemp("unconfigured")
    tag = uuid.uuid4().hex[:10]
    pool, prefix = f"cli{tag}", f"castortest-cli-{tag}"
    (tmp_path / "tools.py").write_text(TOOLS)
    log = tmp_path / "worker.log"
    cmd = [
        sys.executable, "-m", "castor", "worker", "--pool", pool, "--tools", "tools.py:echo,tools.py:long_export",
        "--concurrency", "2", "--fast-start", "--redis", f"{REDIS_URL}?prefix={prefix}",
    ]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=clean_env(), stdout=out, stderr=out)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        wait_ready(proc, pool, log)
        yield pool, prefix, proc, tmp_path
    finally:
        stop_process(proc)
        # no config: the default queue prefix "castor"; only this pool's queue and binding are the test's
        for pattern in (f"{prefix}*", f"castor:castor.{pool}*", f"castor:_kombu.binding*.castor.{pool}"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
        _forget_stale_deadlines(client)
        client.close()


def _forget_stale_deadlines(client: redis.Redis) -> None:
    """kombu notes when the pidbox bindings under the default prefix expire; once no binding is left (the
    worker was its only user), the note points at nothing: remove it, touching no live binding."""
    deadlines = "castor:_kombu.binding_deadlines"
    for exchange in ("celery.pidbox", "reply.celery.pidbox"):
        if not client.exists(f"castor:_kombu.binding.{exchange}"):
            client.zrem(deadlines, exchange)


def worker_conf(pool: str, pid: int) -> dict[str, object]:
    """The Celery configuration the running worker reports (``celery inspect conf``)."""
    from celery import Celery

    app = Celery("castor-test", set_as_current=False)
    app.conf.update(celery_config(Settings()))  # the broker and key prefix a worker with no config uses
    name = f"{pool}-{pid}@{socket.gethostname()}"
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            replies = app.control.inspect(destination=[name], timeout=2).conf() or {}
            if name in replies:
                return dict(replies[name])
        raise AssertionError(f"worker {name} did not answer inspect conf")
    finally:
        app.close()


async def test_a_worker_without_a_config_serves_its_tools_on_its_pool(
    unconfigured: tuple[str, str, subprocess.Popen[bytes], Path],
) -> None:
    pool, prefix, _, tmp_path = unconfigured
    # The coordinator's config maps the tool to the worker's pool; the worker knew only --tools.
    settings = Settings(
        redis={"url": REDIS_URL, "prefix": prefix}, pools={pool: ("echo", "long_export")},
        tools={"import": (f"{tmp_path}/tools.py:echo",), "default_timeout": 20}, security={"secret": SECRET},
    )
    kernel = Castor(**fleet_options(settings, budgets={}))

    async def agent() -> object:
        return await lib.tool("echo", text="hello")

    try:
        cp = await kernel.run(agent)
    finally:
        await kernel.close()
    assert cp.status == "COMPLETED", cp.error
    assert cp.result == {"echo": "hello"}


def test_the_worker_runs_with_the_fleets_celery_config_and_a_visibility_timeout_above_its_tools(
    unconfigured: tuple[str, str, subprocess.Popen[bytes], Path],
) -> None:
    pool, _, proc, _ = unconfigured
    conf = worker_conf(pool, proc.pid)
    # long_export declares an hour in code only; the config (none here) knows 300 s, 3 retries.
    transport = conf["broker_transport_options"]
    assert isinstance(transport, dict) and transport["visibility_timeout"] == 3600 + REPLY_GRACE
    assert conf["worker_prefetch_multiplier"] == 1  # a long tool holds no queued task hostage
    assert conf["task_acks_late"] is True and conf["task_reject_on_worker_lost"] is True  # a lost worker's task returns
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"  # never pickle
    assert conf["worker_send_task_events"] is True  # Flower sees every task


def test_the_worker_app_is_built_with_the_fleets_celery_config() -> None:
    from castor.fleet.workers.app import make_app

    conf = make_app(Settings()).conf
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert list(conf.accept_content) == ["json"] and conf.event_serializer == "json"
    assert conf.worker_send_task_events and conf.task_send_sent_event


def test_a_worker_keeps_other_pools_long_tools_from_being_taken_for_lost(tmp_path: Path) -> None:
    # On a Redis broker any consumer restores any queue's unacked tasks: the fs worker's visibility
    # timeout must exceed the deadline the web pool's tool declares in code.
    from castor.fleet.workers.main import deadline_tools, worker_registry

    from castor.fleet.celery_config import celery_config
    from castor.settings import load_settings

    (tmp_path / "fleet_tools.py").write_text(textwrap.dedent("""
        from castor import castor_tool

        def write(path: str) -> str:
            return path

        @castor_tool(timeout_seconds=7200)
        def crawl(url: str) -> str:
            return url
    """))
    config = tmp_path / "castor.toml"
    config.write_text(textwrap.dedent(f"""
        [tools]
        import = ["{tmp_path / 'fleet_tools.py'}:write", "{tmp_path / 'fleet_tools.py'}:crawl"]
        [pools]
        fs = ["write"]
        web = ["crawl"]
    """))
    settings = load_settings(config, env={})
    fs = worker_registry(settings, "fs")
    assert fs.names() == ["write"]
    visibility = celery_config(settings, tools=deadline_tools(settings, fs))["broker_transport_options"]
    assert visibility["visibility_timeout"] > 7200


# --- start-up errors --------------------------------------------------------------------------------


def start_failing(tmp_path: Path, config: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``castor worker ARGS`` in a directory whose ./castor.toml is ``config`` (found without --config). Were
    it to start after all, it would consume only a queue of its own (``ARGS`` name a fresh pool), briefly."""
    (tmp_path / "castor.toml").write_text(textwrap.dedent(config))
    (tmp_path / "tools.py").write_text(TOOLS)
    return subprocess.run(
        [sys.executable, "-m", "castor", "worker", "--fast-start", *args], cwd=tmp_path, env=clean_env(),
        capture_output=True, text=True, timeout=20,
    )


@pytest.mark.fleet
def test_a_worker_of_a_pool_the_found_config_lacks_exits_with_one_line(tmp_path: Path) -> None:
    done = start_failing(tmp_path, """
        [tools]
        import = ["tools.py:echo"]
        [pools]
        fs = ["echo"]
    """, "--pool", "nope")
    assert done.returncode == 1
    assert done.stderr == f"castor: error: unknown pool 'nope' in {tmp_path}/castor.toml; pools: default, fs, llm\n"


@pytest.mark.fleet
def test_a_worker_on_a_config_with_an_unknown_key_exits_with_one_line(tmp_path: Path) -> None:
    done = start_failing(tmp_path, """
        [workers]
        concurrency = 4
        colour = "red"
    """, "--pool", f"cfg{uuid.uuid4().hex[:10]}", "--tools", "tools.py:echo")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"castor: error: {tmp_path}/castor.toml: unknown key 'colour' in [workers]; ")


# --- the CLI's store options --------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["worker", "--pool", "fs", "--tools", "t.py:x"], ["flower"]])
@pytest.mark.parametrize(("flags", "named"), [
    (["--db", "runs.db"], "--db 'runs.db'"),
    (["--store", "memory://"], "--store 'memory://'"),
])
def test_a_fleet_process_refuses_a_store_that_is_not_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    command: list[str], flags: list[str], named: str,
) -> None:
    import castor.fleet.workers.flower
    import castor.fleet.workers.main

    def started(*_: object, **__: object) -> None:
        raise AssertionError("the process started, its store option ignored")

    monkeypatch.setattr(castor.fleet.workers.main, "run_worker", started)
    monkeypatch.setattr(castor.fleet.workers.flower, "run_flower", started)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CASTOR_CONFIG", raising=False)
    assert main([*command, *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"castor: error: castor {command[0]} keeps the fleet's state in Redis: {named} is not")


def test_a_fleet_process_takes_redis_from_redis_or_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from castor.cli import build_parser
    from castor.cli._celery_cmds import fleet_process_settings

    monkeypatch.chdir(tmp_path)
    for var in ("CASTOR_CONFIG", "CASTOR_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "castor.toml").write_text('[redis]\nurl = "redis://config:6379/0"\nprefix = "team"\n')
    parse = build_parser().parse_args
    assert fleet_process_settings(parse(["worker", "--pool", "fs"])).redis.url == "redis://config:6379/0"
    given = fleet_process_settings(parse(["worker", "--pool", "fs", "--redis", "other:6380"]))
    assert (given.redis.url, given.redis.prefix, given.broker_url) == ("redis://other:6380", "team", "redis://other:6380")
    before = fleet_process_settings(parse(["--store", "redis://h/3?prefix=p", "flower"]))
    assert (before.redis.url, before.redis.prefix) == ("redis://h/3", "p")


def test_a_worker_that_celery_stops_on_an_error_exits_non_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Celery's worker_main dropped the exit code: a worker stopped by an unrecoverable error (a lost broker
    # connection it could not recover from) exited 0, and a supervisor took it for a clean stop.
    import castor.fleet.workers.main
    from celery import Celery

    started: list[list[str]] = []

    def celery_stops(self: Celery, argv: list[str] | None = None) -> int:
        started.append(list(argv or []))
        return 1  # EX_FAILURE: what Celery's worker exits with after "Unrecoverable error"

    monkeypatch.setattr(Celery, "start", celery_stops)
    monkeypatch.setattr(castor.fleet.workers.main, "preflight", lambda *_: None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CASTOR_CONFIG", raising=False)
    monkeypatch.setenv("CASTOR_SECRET", SECRET)
    (tmp_path / "tools.py").write_text(TOOLS)
    argv = ["worker", "--pool", "p", "--tools", f"{tmp_path}/tools.py:echo", "--redis", REDIS_URL]
    assert main(argv) == 1
    assert started and started[0][0] == "worker"


def test_an_async_tools_own_timer_fires_before_celerys_soft_limit() -> None:
    """The worker times an async tool itself and reports the timeout; Celery's soft limit must not fire at
    the same instant and cut that report short (the step would be left in doubt). A synchronous tool has
    no other timer: its soft limit is its timeout."""
    from castor.fleet.workers.app import make_app
    from castor.fleet.workers.runtime import WorkerRuntime
    from castor.fleet.workers.tasks import HARD_LIMIT_GRACE, register_tools

    from castor.registry import ToolRegistry

    async def slow_fetch(url: str) -> str:
        return url

    def slow_sum(a: int) -> int:
        return a

    settings = Settings(tools={"timeouts": {"slow_fetch": 2.0, "slow_sum": 2.0}})
    registry = ToolRegistry()
    registry.add(slow_fetch)
    registry.add(slow_sum)
    app = make_app(settings, name="soft-limit-test")
    register_tools(app, WorkerRuntime(settings, registry))
    fetch, total = app.tasks["castor.tool.slow_fetch"], app.tasks["castor.tool.slow_sum"]
    assert fetch.soft_time_limit > 2.0 and fetch.time_limit == fetch.soft_time_limit + HARD_LIMIT_GRACE
    assert total.soft_time_limit == 2.0 and total.time_limit == 2.0 + HARD_LIMIT_GRACE
