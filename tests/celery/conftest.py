"""A real fleet for the Celery tests: Redis at 127.0.0.1:6379 under a unique key and queue prefix, and
two worker processes (pool ``fs``: prefork, so a test can SIGKILL the child running a call; pool ``web``:
threads). Everything the session created in Redis is deleted at the end; nothing else is touched.
``running_fleet`` builds the same fleet on another broker (``test_amqp.py``: RabbitMQ)."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from castor import Castor
from castor.executors.celery import fleet_options
from castor.settings import Settings, load_settings

REDIS_URL = os.environ.get("CASTOR_TEST_REDIS", "redis://127.0.0.1:6379/0")
TOOLS = Path(__file__).with_name("fleet_tools.py")
ROOT = Path(__file__).resolve().parents[2]
FS_TOOLS = ["write_note", "delete_file", "slow_copy", "slow_note", "slow_remove", "slow_write", "stuck",
            "sealed_login", "sealed_rotate"]
WEB_TOOLS = ["search", "summarize", "explode", "flaky", "flaky_login", "leaky_login", "bulky"]

CONFIG = """
[redis]
url = "{redis}"
prefix = "{prefix}"

[broker]
url = "{broker}"
queue_prefix = "{queues}"

[security]
secret = "{secret}"
max_argument_bytes = 2048

[tools]
import = [{imports}]
default_timeout = 20
max_retries = 1
retry_backoff = 0.1
max_result_bytes = 65536
timeouts = {{ noop = 0.5 }}

[pools]
fs = [{fs}]
web = [{web}]

[flower]
basic_auth = "castor:test"
"""


@dataclass
class Fleet:
    """The session's settings, worker processes and their logs."""

    settings: Settings
    config: Path
    env: dict[str, str]
    workers: dict[str, subprocess.Popen[bytes]]
    logs: dict[str, Path]
    redis: redis.Redis

    @property
    def prefix(self) -> str:
        return self.settings.redis.prefix

    def count(self, tag: str, what: str) -> int:
        """How often a test tool started / finished the call tagged ``tag``."""
        value = self.redis.get(f"{self.prefix}:count:{tag}:{what}")
        return int(value) if value else 0

    def running_pid(self, tag: str, timeout: float = 10.0) -> int:
        """The pid of the process running the call tagged ``tag``, once it runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.redis.get(f"{self.prefix}:pid:{tag}")
            if value:
                return int(value)
            time.sleep(0.02)
        raise AssertionError(f"call {tag!r} never started")

    def log(self, pool: str) -> str:
        return self.logs[pool].read_text(errors="replace")


def _quoted(names: list[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def spawn_worker(config: Path, pool: str, impl: str, concurrency: int, env: dict[str, str], log: Path
                 ) -> subprocess.Popen[bytes]:
    """A worker subprocess of ``pool``, started (not yet ready: ``wait_ready``)."""
    cmd = [
        sys.executable, "-m", "castor.fleet.workers", "worker", "--config", str(config), "--pool", pool,
        "--pool-impl", impl, "--concurrency", str(concurrency), "--fast-start", "--loglevel", "INFO",
    ]
    with log.open("ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env={**env, "CASTOR_TEST_POOL": pool}, stdout=out, stderr=out)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM, and SIGKILL if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def wait_ready(proc: subprocess.Popen[bytes], pool: str, log: Path, timeout: float = 20.0) -> None:
    """Return once the worker is ready to consume; ``RuntimeError`` with its log if it exits or stalls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if " ready." in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"worker {pool} exited: {log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"worker {pool} not ready: {log.read_text(errors='replace')[-3000:]}")


@contextlib.contextmanager
def running_fleet(tmp: Path, broker: str = REDIS_URL, *, state: str = REDIS_URL, prefixes: tuple[str, str] | None = None
                  ) -> Iterator[Fleet]:
    """Two worker pools on ``broker`` (Redis by default) with state in the Redis at ``state`` under a private
    prefix (or ``prefixes``: the state's and the queues'), started side by side; their processes and keys
    are gone after."""
    tag = uuid.uuid4().hex[:12]
    prefix, queues = prefixes or (f"castortest-{tag}", f"castortestq-{tag}")
    config = tmp / "castor.toml"
    names = FS_TOOLS + WEB_TOOLS
    config.write_text(CONFIG.format(
        redis=state, broker=broker, prefix=prefix, queues=queues, fs=_quoted(FS_TOOLS), web=_quoted(WEB_TOOLS),
        secret=secrets.token_hex(32),
        imports=_quoted([f"{TOOLS}:{n}" for n in [*names, "noop"]]),
    ))
    env = {**os.environ, "CASTOR_TEST_PREFIX": prefix, "CASTOR_TEST_REDIS": state, "PYTHONPATH": str(ROOT)}
    for var in ("CASTOR_REDIS_URL", "CASTOR_BROKER_URL", "CASTOR_SECRET"):
        env.pop(var, None)
    client = redis.Redis.from_url(state)
    logs = {pool: tmp / f"worker-{pool}.log" for pool in ("fs", "web")}
    workers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        workers["fs"] = spawn_worker(config, "fs", "prefork", 2, env, logs["fs"])
        workers["web"] = spawn_worker(config, "web", "threads", 4, env, logs["web"])
        for pool, proc in workers.items():
            wait_ready(proc, pool, logs[pool])
        yield Fleet(load_settings(config, env={}), config, env, workers, logs, client)
    finally:
        for proc in workers.values():
            proc.terminate()
        stop_by = time.monotonic() + 3  # an idle threads worker on RabbitMQ sees SIGTERM only at its hub's
        for proc in workers.values():  # next wake-up, up to 10 s later; nothing it holds needs the wait
            try:
                proc.wait(max(0.1, stop_by - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pattern in (f"{prefix}*", f"{queues}*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
        client.close()


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Two worker pools on a Redis broker, torn down (processes and keys) after the session."""
    with running_fleet(tmp_path_factory.mktemp("fleet")) as made:
        os.environ["CASTOR_TEST_PREFIX"] = made.prefix  # the test process counts too (approvals run tools nowhere)
        yield made


@contextlib.asynccontextmanager
async def kernel_on(fleet: Fleet) -> AsyncIterator[Castor]:
    """A coordinator kernel on ``fleet``: Redis store, Celery executor; closed after."""
    k = Castor(**fleet_options(fleet.settings, budgets={}))
    try:
        yield k
    finally:
        await k.close()


@pytest.fixture
async def kernel(fleet: Fleet) -> AsyncIterator[Castor]:
    """A coordinator kernel on the session's fleet."""
    async with kernel_on(fleet) as k:
        yield k


@pytest.fixture
def own_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A fleet of the test's own, for an attack that would stop the session's workers were it to work."""
    with running_fleet(tmp_path) as made:
        yield made


@pytest.fixture
async def own_kernel(own_fleet: Fleet) -> AsyncIterator[Castor]:
    """A coordinator kernel on the test's own fleet."""
    async with kernel_on(own_fleet) as k:
        yield k
