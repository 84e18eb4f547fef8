"""Real processes for the fleet tests: worker pools, coordinators and CLI calls, on a private key prefix
and private queue names, so nothing another test or user keeps in the same Redis is touched."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from castor.backends.redis import redis_client
from tests.redis_support import start_redis_server

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TOOLS = HERE / "fleet_tools.py"
AGENTS = HERE / "fleet_agent.py"
CASTOR = [sys.executable, "-m", "castor"]
POOLS = {"web": ["ticket", "fetch", "pid_of"], "fs": ["store", "remove", "slow_write"]}

CONFIG = """
[redis]
url = "{url}"
prefix = "{prefix}"

[broker]
url = "{url}"
queue_prefix = "{queues}"

[security]
secret = "{secret}"

[tools]
import = [{imports}]
default_timeout = 20
max_retries = 1
retry_backoff = 0.1

[pools]
web = [{web}]
fs = [{fs}]

[workers]
default_pool = "web"
"""


def tool_spec(name: str) -> str:
    """The import spec of a test tool."""
    return f"{TOOLS}:{name}"


def agent_spec(name: str) -> str:
    """The import spec of a test agent."""
    return f"{AGENTS}:{name}"


def _quoted(names: list[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


@dataclass
class Fleet:
    """One test's fleet: its Redis names, config file, environment and the processes it started."""

    url: str
    tmp: Path
    prefix: str = field(default_factory=lambda: f"castortest-{uuid.uuid4().hex[:12]}")
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    redis: redis.Redis = field(init=False)

    def __post_init__(self) -> None:
        self.queues = self.prefix.replace("castortest-", "castortestq-")
        self.config = self.tmp / "castor.toml"
        tools = [n for names in POOLS.values() for n in names]
        self.config.write_text(CONFIG.format(
            url=self.url, prefix=self.prefix, queues=self.queues, imports=_quoted([tool_spec(n) for n in tools]),
            secret=secrets.token_hex(32),
            web=_quoted(POOLS["web"]), fs=_quoted(POOLS["fs"]),
        ))
        self.env = {**os.environ, "CASTOR_REDIS_URL": self.url, "CASTOR_REDIS_PREFIX": self.prefix,
                    "CASTOR_TEST_PREFIX": self.prefix, "CASTOR_TEST_REDIS": self.url, "PYTHONPATH": str(ROOT),
                    "PYTHONFAULTHANDLER": "1"}  # a process stopped with SIGABRT logs where it hung
        for var in ("CASTOR_BROKER_URL", "CASTOR_SECRET", "CASTOR_STORE"):
            self.env.pop(var, None)
        self.redis = redis_client(self.url, sync=True, decode_responses=True)  # a Sentinel URL too

    def log(self, name: str) -> str:
        """What a process printed so far."""
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, name: str, *args: str, ready: str | None = None, timeout: float = 20.0) -> subprocess.Popen[bytes]:
        """Start ``castor ARGS`` as process ``name``; wait until its log says ``ready`` (if given)."""
        with (self.tmp / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen([*CASTOR, *args], cwd=ROOT, env=self.env, stdout=out, stderr=out)
        self.procs[name] = proc
        deadline = time.monotonic() + timeout
        while ready is not None and ready not in self.log(name):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{name} did not start: {self.log(name)[-3000:]}")
            time.sleep(0.05)
        return proc

    def worker(self, pool: str, concurrency: int = 4) -> subprocess.Popen[bytes]:
        """A worker process of ``pool``, returned once it consumes."""
        return self.start(
            f"worker-{pool}", "worker", "--config", str(self.config), "--pool", pool, "--pool-impl", "threads",
            "--concurrency", str(concurrency), "--fast-start", "--loglevel", "INFO", ready=" ready.",
        )

    def coordinator(self, name: str, *extra: str, lease: float = 1.5, executor: str = "celery",
                    concurrency: int = 8) -> subprocess.Popen[bytes]:
        """A coordinator process, returned once it is registered."""
        args = ["coordinator", "--name", name, "--lease", str(lease), "--concurrency", str(concurrency),
                "--executor", executor, "--grace", "5"]
        if executor == "celery":
            args += ["--config", str(self.config)]
        return self.start(name, *args, *extra, ready="coordinating")

    def cli(self, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``castor ARGS`` to completion."""
        done = subprocess.run([*CASTOR, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"castor {' '.join(args)} exited {done.returncode}: {done.stderr}{done.stdout}")
        return done

    def cli_json(self, *args: str) -> Any:
        """``castor ARGS --json``, parsed."""
        return json.loads(self.cli(*args, "--json").stdout)

    def count(self, tag: str) -> int:
        """How often the test tools ran the call tagged ``tag``."""
        return int(self.redis.get(f"{self.prefix}:count:{tag}") or 0)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal a process and (unless it is a stop/continue) wait for it to exit."""
        proc = self.procs[name]
        proc.send_signal(sig)
        if sig in (signal.SIGSTOP, signal.SIGCONT):
            return None
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # the faulthandler writes every thread's stack to its log
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
            proc.wait(5)
            return None

    def close(self) -> None:
        """Stop every process and delete every key and queue of this fleet."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pattern in (f"{self.prefix}*", f"{self.queues}*"):
            batch = list(self.redis.scan_iter(match=pattern, count=1000))
            for i in range(0, len(batch), 500):
                self.redis.delete(*batch[i:i + 500])
        self.redis.close()


AOF = ("--appendonly", "yes", "--appendfsync", "always")


class PrivateRedis:
    """A ``redis-server`` of the test's own, with AOF on, that the test stops and starts again."""

    def __init__(self, data: Path, port: int) -> None:
        self.data, self.port = data, port
        self.proc = start_redis_server(data, port, *AOF)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save (every write was fsynced to the AOF)."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def start(self) -> None:
        """Start it again on the same port and files."""
        self.proc = start_redis_server(self.data, self.port, *AOF)
