"""Two operators forking one run at one step at the same moment, each in a process of its own: two
``castor fork``, on one SQLite file and on one Redis prefix; ``castor fork`` against the console; two
consoles; two ``castor fork`` of a fleet run. Exactly one makes the fork (and drives or submits it); every
other is told, in one line, that the run exists. The fork shares its parent's first steps, and its
destructive call runs once.

Each racer imports everything, then waits on a file barrier (``tests.cli.test_races``), so all of them
start in the same moment. A racer that looks for the fork and does not find it then waits (up to a few
seconds) until every racer has looked too: the widest the window between looking and making can be, met
for sure, whichever racer is quicker to start (the console's is: its store is open before the barrier).
Each scenario runs several rounds, one fork step each.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from castor.backends import open_backend
from castor.backends.redis import keys
from tests.cli.test_races import _env, castor, executions

pytestmark = pytest.mark.fleet  # starts CLI processes

TOOLS = '''
import os
from pathlib import Path


def wipe(path: str) -> str:
    with Path(__file__).with_name("executions.log").open("a") as log:
        log.write(f"{os.getpid()}\\n")
    return f"wiped {path}"


def note(text: str) -> str:
    with Path(__file__).with_name("notes.log").open("a") as notes:
        notes.write(f"{os.getpid()}\\n")
    return text
'''

AGENT = '''
from castor.lib import tool


async def job():
    await tool("note", text="one")
    await tool("note", text="two")
    answer = await tool("wipe", path="/data")
    await tool("note", text=answer)
    return f"done: {answer}"
'''

# Run first by every racer: a run store whose look for a fork that is not there waits for the other racers'.
MEET = '''
import sys
import time
from pathlib import Path

from castor.backends.redis.runs import RedisRunStore
from castor.backends.sqlite.journal import SqliteRunStore

RACERS = int(sys.argv.pop())  # the racer's own arguments come before it


def meet(cls):
    load = cls.load

    async def looked(self, pid):
        found = await load(self, pid)
        if found is None and ("::fork-" in pid or pid == "twin"):  # a fork, or a run under a chosen pid
            here = Path(sys.argv[1])
            here.with_suffix(".looked").touch()
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and len(list(here.parent.glob("*.looked"))) < RACERS:
                time.sleep(0.001)
        return found

    cls.load = looked


meet(SqliteRunStore)
meet(RedisRunStore)
'''

RACER = '''
import sys
import time
from pathlib import Path

import meet  # noqa: F401

from castor.cli import main
import castor.cli._runs, castor.cli._fleet_views, castor.kernel.facade  # noqa: F401  (before the barrier)

Path(sys.argv[1]).touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.001)
sys.exit(main(sys.argv[3:]))
'''

CONSOLE = '''
import asyncio
import sys
import time
from pathlib import Path

import httpx

import meet  # noqa: F401
from castor.backends import open_backend
from castor.console.app import create_app
from castor.settings._console import ConsoleSection

TOKEN = "ann-token-0123456789abcd"


async def fork(store: str, pid: str, step: int) -> int:
    backend = open_backend(store)
    app = create_app(backend, ConsoleSection(users=[{"name": "ann", "token": TOKEN, "role": "admin"}]))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8765") as http:
            Path(sys.argv[1]).touch()
            while not Path(sys.argv[2]).exists():
                time.sleep(0.001)
            answer = await http.post(
                f"/api/runs/{pid}/fork", json={"at_step": step}, headers={"Authorization": f"Bearer {TOKEN}"}
            )
    await backend.close()
    print(answer.status_code, answer.text)
    return 0 if answer.status_code == 200 else 1


sys.exit(asyncio.run(fork(sys.argv[3], sys.argv[4], int(sys.argv[5]))))
'''

@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """The ``--store`` option of every process: one SQLite file, or one Redis prefix."""
    if request.param == "sqlite":
        return ["--store", f"sqlite:///{tmp_path / 'castor.db'}"]
    return ["--store", f"{request.getfixturevalue('redis_url')}?prefix={request.getfixturevalue('redis_prefix')}"]


STEPS = (1, 2, 0)  # one round per fork step: each round races for another fork of the run


def parent_run(cwd: Path, where: list[str]) -> None:
    """Run ``racy`` to its end: note, note, wipe (destructive, approved), note."""
    (cwd / "tools.py").write_text(textwrap.dedent(TOOLS))
    (cwd / "agent.py").write_text(textwrap.dedent(AGENT))
    done = castor(
        cwd, *where, "run", "agent.py:job", "--tool", "tools.py:wipe", "--destructive", "--tool", "tools.py:note",
        "--pid", "racy", "--hitl", "approve-all",
    )
    assert done.returncode == 0 and "COMPLETED" in done.stdout, done.stdout + done.stderr
    assert executions(cwd) == 1 and executions(cwd, "notes.log") == 3


@contextmanager
def fleet_parent(cwd: Path, redis_url: str, redis_prefix: str) -> Iterator[tuple[str, Any]]:
    """The parent run on Redis, marked as the fleet's (so are its forks then): its store URL and a client."""
    import redis

    url = f"{redis_url}?prefix={redis_prefix}"
    parent_run(cwd, ["--store", url])
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        client.sadd(keys.submitted(redis_prefix), "racy")
        yield url, client
    finally:
        client.close()


def race(cwd: Path, racers: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Start each racer (a script and its arguments) in a process of its own; release them together once
    all are ready; wait for them all."""
    (cwd / "racer.py").write_text(RACER)
    (cwd / "console_racer.py").write_text(CONSOLE)
    (cwd / "meet.py").write_text(MEET)
    go = cwd / "go"
    go.unlink(missing_ok=True)
    ready = [cwd / f"ready-{i}" for i in range(len(racers))]
    for flag in [*ready, *cwd.glob("*.looked")]:
        flag.unlink(missing_ok=True)
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(flag), str(go), *args, str(len(racers))], cwd=cwd, env=_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for flag, (script, *args) in zip(ready, racers, strict=True)
    ]
    deadline = time.monotonic() + 60
    while not all(flag.exists() for flag in ready):
        assert time.monotonic() < deadline, "the racers never got ready"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    go.touch()
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=90)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def one_won(results: list[subprocess.CompletedProcess[str]], fork: str) -> subprocess.CompletedProcess[str]:
    """The one racer that made the fork; every other was refused in one line naming it."""
    outputs = "\n".join(f"$ {' '.join(r.args[2:])} -> {r.returncode}\n{r.stdout}{r.stderr}" for r in results)
    won = [r for r in results if r.returncode == 0]
    assert len(won) == 1, outputs
    for lost in results:
        if lost is won[0]:
            continue
        assert f"'{fork}' exists already" in lost.stdout + lost.stderr, outputs
        assert "Traceback" not in lost.stderr, outputs
    return won[0]


async def journals(url: str, fork: str) -> tuple[list[dict[str, object]], list[dict[str, object]], int]:
    backend = open_backend(url)
    try:
        parent = [r.model_dump() for r in await backend.journal.history("racy")]
        forked = [r.model_dump() for r in await backend.journal.history(fork)]
        listed = sum(s.pid == fork for s in await backend.runs.list(limit=500))
        return parent, forked, listed
    finally:
        await backend.close()


def shares_prefix(url: str, fork: str, at: int) -> list[dict[str, object]]:
    parent, forked, listed = asyncio.run(journals(url, fork))
    assert listed == 1 and forked[:at] == parent[:at] and len(forked) >= at, (listed, forked, parent)
    return forked


def cli_fork(where: list[str], at: int, *extra: str) -> list[str]:
    return ["racer.py", *where, "fork", "racy", "--at-step", str(at), *extra]


@pytest.mark.parametrize("store", ["sqlite", "redis"], indirect=True)
def test_two_castor_forks_at_one_step_make_one_fork(tmp_path: Path, store: list[str]) -> None:
    parent_run(tmp_path, store)
    wiped = 1
    for at in STEPS:
        fork = f"racy::fork-{at}"
        results = race(tmp_path, [cli_fork(store, at, "--hitl", "approve-all")] * 2)
        won = one_won(results, fork)
        assert f"-> {fork}" in won.stdout and "COMPLETED" in won.stdout, won.stdout
        wiped += at <= 2  # a fork before the wipe runs it again, in the one process that made the fork
        assert executions(tmp_path) == wiped, [r.stdout + r.stderr for r in results]
        shares_prefix(store[1], fork, at)


def test_castor_fork_and_the_console_at_one_step_make_one_fork(tmp_path: Path) -> None:
    sqlite = ["--store", f"sqlite:///{tmp_path / 'castor.db'}"]
    parent_run(tmp_path, sqlite)
    for at in STEPS:
        fork = f"racy::fork-{at}"
        wiped = executions(tmp_path)
        results = race(tmp_path, [cli_fork(sqlite, at, "--hitl", "approve-all"),
                                  ["console_racer.py", sqlite[1], "racy", str(at)]])
        won = one_won(results, fork)
        shares_prefix(sqlite[1], fork, at)
        if won.args[1] == "racer.py":  # the CLI drove it, approving the wipe: once
            assert "COMPLETED" in won.stdout and executions(tmp_path) == wiped + 1, won.stdout
        else:  # the console stored it and started `castor resume`, which stops at the wipe for a human
            assert '"next":"the fork runs now (castor resume)"' in won.stdout, won.stdout
            assert executions(tmp_path) == wiped, won.stdout


def test_two_consoles_at_one_step_make_one_fork(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    url = f"{redis_url}?prefix={redis_prefix}"
    parent_run(tmp_path, ["--store", url])
    for at in STEPS:
        fork = f"racy::fork-{at}"
        won = one_won(race(tmp_path, [["console_racer.py", url, "racy", str(at)]] * 2), fork)
        assert f'"pid":"{fork}"' in won.stdout, won.stdout
        shares_prefix(url, fork, at)


def test_two_castor_forks_of_a_fleet_run_submit_one_fork_once(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    with fleet_parent(tmp_path, redis_url, redis_prefix) as (url, client):
        for at in STEPS:
            fork = f"racy::fork-{at}"
            won = one_won(race(tmp_path, [cli_fork(["--store", url], at)] * 2), fork)
            assert won.stdout.strip() == fork, won.stdout
            shares_prefix(url, fork, at)
            assert client.lrange(keys.run_queue(redis_prefix), 0, -1).count(fork) == 1  # submitted once
