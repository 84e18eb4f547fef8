"""The fault harness's fleet: its own ``redis-server`` (AOF, fsync always) on a free port, two worker pools
and two coordinators started with the public CLI, and a supervisor that restarts what exits, as
systemd or compose would. Everything lives in one temporary directory; nothing touches another Redis."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.ports import free_port  # the harness's Redis is restarted on its port: outside the ephemeral range

ROOT = Path(__file__).resolve().parents[1]
AGENTS = Path(__file__).resolve().parent / "_faults_agents.py"
CASTOR = [sys.executable, "-m", "castor"]
PREFIX, QUEUES = "faults", "faultsq"
WORKERS, COORDINATORS = ("fa", "fb"), ("co-1", "co-2")
SPARE = ("fq",)  # pools no worker serves until a trial starts one (``start_spare``): calls wait on their queue
RESTART_DELAY = 1.0  # s before the supervisor restarts a process (systemd's RestartSec)
REPLY_GRACE = 30.0  # s a coordinator waits for a reply past a call's timeout (README: its deadline)


def spec(name: str) -> str:
    """The import spec of a harness tool or agent."""
    return f"{AGENTS}:{name}"


def terminate(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM ``proc`` and wait ``grace`` seconds for it to exit; SIGKILL it if it has not."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@dataclass
class Exit:
    """A process of the fleet that exited: who, how, and whether the harness killed it."""

    name: str
    code: int
    at: float
    planned: bool
    pid: int = 0  # its OS pid: the tools' records name the process they ran in


@dataclass
class Timing:
    """How long the tools sleep, how long the coordinators' leases last and Redis stays down. The calls
    that trials lose (``fx_lost_*``) sleep ``lost`` seconds under a timeout of ``lost_timeout``: a lost
    call is noticed at its deadline, ``lost_timeout`` plus the reply grace."""

    short: float
    long: float
    lease: float
    outage: float
    lost: float = 3.0
    lost_timeout: float = 5.0

    @property
    def lost_deadline(self) -> float:
        """How long a coordinator waits for the reply of a lost call."""
        return self.lost_timeout + REPLY_GRACE


@dataclass
class FaultFleet:
    """One harness run's fleet."""

    tmp: Path
    timing: Timing
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    exits: list[Exit] = field(default_factory=list)
    planned: set[str] = field(default_factory=set)
    redis_proc: subprocess.Popen[bytes] | None = None
    retired: set[str] = field(default_factory=set)  # spare workers stopped for good: the supervisor leaves them

    def __post_init__(self) -> None:
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.records = self.tmp / "records.log"
        self.records.touch()
        self.config = self.tmp / "castor.toml"
        self.config.write_text(self._config_text())
        self.secret = secrets.token_hex(32)
        self.env = {**os.environ, "CASTOR_SECRET": self.secret, "CASTOR_REDIS_URL": self.url,
                    "CASTOR_REDIS_PREFIX": PREFIX, "CASTOR_CONFIG": str(self.config), "PYTHONPATH": str(ROOT),
                    "CASTOR_FAULTS_RECORDS": str(self.records), "CASTOR_FAULTS_SHORT": str(self.timing.short),
                    "CASTOR_FAULTS_LONG": str(self.timing.long), "CASTOR_FAULTS_LOST": str(self.timing.lost),
                    "PYTHONFAULTHANDLER": "1"}
        for var in ("CASTOR_BROKER_URL", "CASTOR_STORE"):
            self.env.pop(var, None)
        self.redis = redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)
        self._lock = threading.Lock()
        self._reads: dict[tuple[str, ...], tuple[float, Any]] = {}
        self._reads_locks: dict[tuple[str, ...], threading.Lock] = {}
        self._stop = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)

    def _config_text(self) -> str:
        from bench._faults_agents import POOLS

        deadline = self.timing.long + 4  # a lost worker is noticed at the call's deadline
        lost = self.timing.lost_timeout  # the calls trials lose: a short deadline, so it is noticed sooner
        imports = ", ".join(f'"{spec(n)}"' for names in POOLS.values() for n in names)
        pools = "\n".join(f"{pool} = {json.dumps(names)}" for pool, names in POOLS.items())
        return (f'[redis]\nurl = "{self.url}"\nprefix = "{PREFIX}"\n\n'
                f'[broker]\nurl = "{self.url}"\nqueue_prefix = "{QUEUES}"\n\n'
                f"[tools]\nimport = [{imports}]\ndefault_timeout = {deadline}\nmax_retries = 0\n"
                f"timeouts = {{ fx_lost_once = {lost}, fx_lost_idem = {lost} }}\n"
                f'retry_backoff = 0.1\nidempotent = ["fx_idem", "fx_lost_idem"]\n\n[pools]\n{pools}\n\n'
                f'[workers]\ndefault_pool = "fa"\nconcurrency = 4\npool = "threads"\n')

    # --- Redis ------------------------------------------------------------------------------------------

    def start_redis(self) -> None:
        """Start (or restart, on the same AOF) the fleet's ``redis-server`` and wait until it answers."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.tmp), "--save", "",
                "--appendonly", "yes", "--appendfsync", "always", "--logfile", str(self.tmp / "redis.log")]
        self.redis_proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                if self.redis.ping():
                    return
            except redis.RedisError:
                pass
            if self.redis_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)

    def stop_redis(self, clean: bool) -> None:
        """``SHUTDOWN`` (clean) or SIGKILL the fleet's Redis, and wait until it is gone."""
        assert self.redis_proc is not None
        if clean:
            with contextlib.suppress(redis.RedisError):  # the connection closes as the server exits
                self.redis.shutdown()
        else:
            self.redis_proc.kill()
        self.redis_proc.wait(15)

    # --- processes --------------------------------------------------------------------------------------

    def log(self, name: str) -> str:
        """What a process printed so far (all its incarnations)."""
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _args(self, name: str) -> list[str]:
        if name in WORKERS or name in SPARE:
            return ["worker", "--config", str(self.config), "--pool", name, "--fast-start", "--loglevel", "INFO"]
        return ["coordinator", "--config", str(self.config), "--name", name, "--lease", str(self.timing.lease),
                "--concurrency", "20", "--grace", "5"]

    def _spawn(self, name: str) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen([*CASTOR, *self._args(name)], cwd=ROOT, env=self.env, stdout=out, stderr=out)
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        """Redis, both pools and both coordinators; returns once each is ready; then the supervisor."""
        self.start_redis()
        for name in (*WORKERS, *COORDINATORS):
            ready = " ready." if name in WORKERS else "coordinating"
            before = len(self.log(name))
            proc = self._spawn(name)
            deadline = time.monotonic() + 60
            while ready not in self.log(name)[before:]:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start: {self.log(name)[-3000:]}")
                time.sleep(0.05)
        self._supervisor.start()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a process the harness means to stop (the supervisor restarts it as planned)."""
        with self._lock:
            self.planned.add(name)
            self.procs[name].send_signal(sig)

    def _supervise(self) -> None:
        while not self._stop.wait(0.1):
            with self._lock:
                gone = [(n, p.returncode, p.pid) for n, p in self.procs.items() if p.poll() is not None]
                for name, code, os_pid in gone:
                    self.exits.append(Exit(name, code, time.time(), name in self.planned, os_pid))
                    self.planned.discard(name)
                    self.procs.pop(name)
            for name, _, _ in gone:
                threading.Timer(RESTART_DELAY, self._restart, args=(name,)).start()

    def _restart(self, name: str) -> None:
        with self._lock:
            if not self._stop.is_set() and name not in self.procs and name not in self.retired:
                self._spawn(name)

    def start_spare(self, name: str) -> int:
        """Start the worker of a spare pool (supervised from then on); returns once it is ready, with the
        length its log had before it started (what it prints from then on follows)."""
        with self._lock:
            self.retired.discard(name)
            before = len(self.log(name))
            proc = self._spawn(name)
        deadline = time.monotonic() + 60
        while " ready." not in self.log(name)[before:]:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {self.log(name)[-3000:]}")
            time.sleep(0.05)
        return before

    def retire(self, name: str) -> None:
        """Stop a spare pool's worker (SIGTERM, a warm shutdown) for good, and wait until it is gone."""
        with self._lock:
            self.retired.add(name)
            proc = self.procs.get(name)
            if proc is None:
                return
            self.planned.add(name)
        terminate(proc, 30)

    def queue_length(self, pool: str) -> int:
        """How many tasks wait on ``pool``'s queue (the broker's list, its key carrying the queue prefix)."""
        return int(self.redis.llen(f"{QUEUES}:{QUEUES}.{pool}"))

    def exits_since(self, since: float) -> list[Exit]:
        """The exits seen since ``since`` (a ``time.time()``)."""
        with self._lock:
            return [e for e in self.exits if e.at >= since]

    def pid_of(self, name: str) -> int | None:
        """The OS pid of a fleet process now, if it runs."""
        with self._lock:
            proc = self.procs.get(name)
            return proc.pid if proc is not None and proc.poll() is None else None

    def name_of(self, os_pid: int) -> str | None:
        """Which fleet process has OS pid ``os_pid``."""
        with self._lock:
            return next((n for n, p in self.procs.items() if p.pid == os_pid and p.poll() is None), None)

    # --- the CLI ----------------------------------------------------------------------------------------

    def cli(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``castor ARGS``, run to completion (not checked)."""
        return subprocess.run([*CASTOR, *args], cwd=ROOT, env=env or self.env, capture_output=True, text=True,
                              timeout=timeout)

    def cli_json(self, *args: str) -> Any:
        """``castor ARGS --json``, parsed; None if it failed."""
        done = self.cli(*args, "--json")
        try:
            return json.loads(done.stdout) if done.returncode == 0 else None
        except json.JSONDecodeError:
            return None

    def shared_json(self, *args: str, after: float) -> Any:
        """``cli_json(*args)`` as read by a ``castor`` process started at or after ``after`` (a
        ``time.monotonic()``): trials polling the same view at once share one process, for each costs an
        interpreter's start on a loaded machine."""
        with self._lock:
            lock = self._reads_locks.setdefault(args, threading.Lock())
        with lock:
            at, value = self._reads.get(args, (-1.0, None))
            if at < after:
                at = time.monotonic()
                value = self.cli_json(*args)
                self._reads[args] = (at, value)
            return value

    def close(self) -> None:
        """Stop the supervisor, every process and Redis."""
        self._stop.set()
        with self._lock:
            procs = list(self.procs.values())
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.redis.close()
        if self.redis_proc is not None and self.redis_proc.poll() is None:
            self.redis_proc.kill()
            self.redis_proc.wait(10)
