"""The executors the contract suite runs against: the local one, and the Celery one with a real worker.

The worker is a ``python -m castor.fleet.workers worker`` process (prefork, four children) serving the tools of
``executor_tools.py`` on a pool of its own, with Redis as broker and store under a key and queue prefix
of its own; everything it created in Redis is deleted after. Celery and redis are imported only when the
Celery executor is asked for, so the local executor's tests run without them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from castor.registry import ToolRegistry
from castor.seams import Executor, Journal, ToolCall
from tests.contract import executor_tools

ROOT = Path(__file__).resolve().parents[2]
POOL = "contract"
CONCURRENCY = 4  # the rendezvous test needs this many calls running at once

CONFIG = """
[redis]
url = "{redis}"
prefix = "{prefix}"

[broker]
queue_prefix = "{queues}"

[security]
secret = "contract-{prefix}"

[tools]
import = [{imports}]
default_timeout = 20
max_retries = 0

[pools]
{pool} = [{names}]
"""


def registry() -> ToolRegistry:
    """The suite's tools, as the test process registers them."""
    tools = ToolRegistry()
    for func in executor_tools.TOOLS:
        tools.add(func)
    return tools


@dataclass
class ExecutorCase:
    """An executor under test, the registry it was built with, and the journal it writes (if it does)."""

    executor: Executor
    tools: ToolRegistry
    journal: Journal | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # after the executor's close

    def call(self, tool: str, **arguments: Any) -> ToolCall:
        """A call as the kernel hands it over: step 0 of a run of its own, its arguments checked."""
        run_id = f"contract-{uuid.uuid4().hex[:12]}"
        return ToolCall(run_id, 0, tool, arguments, checked=arguments)


@dataclass(frozen=True)
class Workers:
    """A running worker: the config it was started with and its log."""

    config: Path
    log: Path


@contextlib.contextmanager
def celery_workers(tmp: Path, redis_url: str) -> Iterator[Workers]:
    """A worker process serving the suite's tools; stopped, and its keys and queues deleted, after."""
    import redis

    tag = uuid.uuid4().hex[:12]
    prefix, queues = f"castortest-{tag}", f"castortestq-{tag}"
    names = [func.__name__ for func in executor_tools.TOOLS]
    tools_file = Path(executor_tools.__file__).resolve()
    config = tmp / "castor.toml"
    config.write_text(CONFIG.format(
        redis=redis_url, prefix=prefix, queues=queues, pool=POOL,
        imports=", ".join(f'"{tools_file}:{name}"' for name in names), names=", ".join(f'"{n}"' for n in names),
    ))
    log = tmp / "worker.log"
    env = {key: value for key, value in os.environ.items()
           if key not in ("CASTOR_REDIS_URL", "CASTOR_BROKER_URL", "CASTOR_SECRET", "CASTOR_CONFIG")}
    cmd = [sys.executable, "-m", "castor.fleet.workers", "worker", "--config", str(config), "--pool", POOL,
           "--pool-impl", "prefork", "--concurrency", str(CONCURRENCY), "--fast-start", "--loglevel", "INFO"]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, stdout=out, stderr=out)
    try:
        _wait_ready(proc, log)
        yield Workers(config, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        client = redis.Redis.from_url(redis_url)
        for pattern in (f"{prefix}:*", f"{queues}*", f"_kombu.binding.{queues}*"):
            found = list(client.scan_iter(match=pattern, count=1000))
            if found:
                client.delete(*found)
        client.close()


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    """Return once the worker says it is ready; ``RuntimeError`` with its log if it exits or stalls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if " ready." in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)  # the worker writes its log; there is nothing to wait on but the file
    proc.kill()
    raise RuntimeError(f"contract worker did not start: {log.read_text(errors='replace')[-3000:]}")
