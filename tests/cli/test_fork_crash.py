"""A ``castor fork`` that dies between its steps (``castor.kernel.forks``) leaves no pid unusable: a fork
whose header was never stored is completed by the next fork at that step; one stored but never driven is
refused with the command that drives it; a fleet fork's header is stored and queued at once, and one stored
but never submitted (by a client whose store is not the fleet's Redis, or an earlier release) is submitted
by the next.

The forker is the real command line in a process of its own, killed (``os._exit``) at the step named.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from castor.backends.redis import keys
from tests.cli.test_fork_races import fleet_parent, parent_run, shares_prefix
from tests.cli.test_races import _env, castor, executions

pytestmark = pytest.mark.fleet  # starts CLI processes

# Dies where it is told to: "header" as it would store the fork's header (its journal points at the
# parent's records already), "drive" right after storing the header, "stored" right after a fleet fork's
# transaction (header stored, marked, queued), "queue" right after storing the header of a fleet fork the
# old way (two steps, as a client whose store is not the fleet's Redis), before the fleet queues it.
DYING = '''
import os
import sys

from castor.backends.redis.runs import RedisRunStore
from castor.backends.sqlite.journal import SqliteRunStore
from castor.cli import main
from castor.fleet.client import FleetClient

WHERE = sys.argv.pop(1)


def dying(cls, name, after):
    original = getattr(cls, name)

    async def step(self, *args, **kwargs):
        if after:
            await original(self, *args, **kwargs)
        os._exit(9)

    setattr(cls, name, step)


if WHERE in ("header", "drive"):
    for store in (SqliteRunStore, RedisRunStore):
        dying(store, "create", after=WHERE == "drive")
    dying(RedisRunStore, "create_submitted", after=WHERE == "drive")  # a fleet fork's header
elif WHERE == "stored":
    dying(RedisRunStore, "create_submitted", after=True)
else:  # the header is stored by a save, whatever else its store may do
    FleetClient._is_store = lambda self, backend: False
    dying(RedisRunStore, "save", after=True)
sys.exit(main(sys.argv[1:]))
'''


def dies_forking(cwd: Path, where: str, *args: str) -> None:
    (cwd / "dying.py").write_text(DYING)
    died = subprocess.run(
        [sys.executable, "dying.py", where, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert died.returncode == 9, died.stdout + died.stderr


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_fork_whose_forker_died_is_completed_or_driven_by_the_next(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'castor.db'}"
    else:
        url = f"{request.getfixturevalue('redis_url')}?prefix={request.getfixturevalue('redis_prefix')}"
    store = ["--store", url]
    parent_run(tmp_path, store)
    fork = ["fork", "racy", "--at-step", "1", "--hitl", "approve-all"]

    dies_forking(tmp_path, "header", *store, *fork)  # only its journal pointer was made
    again = castor(tmp_path, *store, *fork)
    assert again.returncode == 0 and "COMPLETED" in again.stdout, again.stdout + again.stderr
    assert executions(tmp_path) == 2  # the parent's wipe, the fork's
    shares_prefix(url, "racy::fork-1", 1)

    dies_forking(tmp_path, "drive", *store, "fork", "racy", "--at-step", "2", "--hitl", "approve-all")
    refused = castor(tmp_path, *store, "fork", "racy", "--at-step", "2")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    [line] = refused.stderr.splitlines()
    assert "'racy::fork-2' exists already" in line, line
    assert "if its forker stopped before driving it: castor resume racy::fork-2 --store " in line, line
    driven = castor(tmp_path, *store, "resume", "racy::fork-2", "--hitl", "approve-all")
    assert driven.returncode == 0 and "COMPLETED" in driven.stdout, driven.stdout + driven.stderr
    assert executions(tmp_path) == 3
    shares_prefix(url, "racy::fork-2", 2)

    # A fork under a chosen pid left as a pointer: a new run under that pid would replay the parent's steps.
    dies_forking(tmp_path, "header", *store, "fork", "racy", "--at-step", "3", "--pid", "orphan")
    fresh = castor(tmp_path, *store, "run", "agent.py:job", "--tool", "tools.py:wipe", "--destructive",
                   "--tool", "tools.py:note", "--pid", "orphan")
    assert fresh.returncode == 1, fresh.stdout + fresh.stderr
    assert "'orphan' exists already; its journal holds steps" in fresh.stderr, fresh.stderr


def refused_again(cwd: Path, url: str, client: redis.Redis, queue: str) -> None:
    """A second fork at step 1 is told the fork exists, and the queue holds the fork once still."""
    refused = castor(cwd, "--store", url, "fork", "racy", "--at-step", "1")
    assert refused.returncode == 1 and "'racy::fork-1' exists already" in refused.stderr, refused.stderr
    assert client.lrange(queue, 0, -1) == ["racy::fork-1"]


def test_a_fleet_fork_stored_but_never_submitted_is_submitted_by_the_next_fork(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    queue = keys.run_queue(redis_prefix)
    with fleet_parent(tmp_path, redis_url, redis_prefix) as (url, client):
        dies_forking(tmp_path, "queue", "--store", url, "fork", "racy", "--at-step", "1")
        assert client.lrange(queue, 0, -1) == []
        again = castor(tmp_path, "--store", url, "fork", "racy", "--at-step", "1")
        assert again.returncode == 0 and again.stdout.strip() == "racy::fork-1", again.stdout + again.stderr
        assert client.lrange(queue, 0, -1) == ["racy::fork-1"]
        shares_prefix(url, "racy::fork-1", 1)
        refused_again(tmp_path, url, client, queue)
        # A fleet fork left as a pointer under a chosen pid: a run submitted under it is refused, not queued.
        dies_forking(tmp_path, "header", "--store", url, "fork", "racy", "--at-step", "2", "--pid", "orphan")
        fresh = castor(tmp_path, "--store", url, "submit", "agent.py:job", "--tool", "tools.py:wipe", "--destructive",
                       "--tool", "tools.py:note", "--pid", "orphan")
        assert fresh.returncode == 1, fresh.stdout + fresh.stderr
        assert "'orphan' exists already; its journal holds steps" in fresh.stderr, fresh.stderr
        assert client.lrange(queue, 0, -1) == ["racy::fork-1"]


def test_a_fleet_fork_whose_forker_dies_after_storing_it_is_queued(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    queue = keys.run_queue(redis_prefix)
    with fleet_parent(tmp_path, redis_url, redis_prefix) as (url, client):
        dies_forking(tmp_path, "stored", "--store", url, "fork", "racy", "--at-step", "1")
        assert client.lrange(queue, 0, -1) == ["racy::fork-1"]  # stored means queued: no later fork needed
        assert client.sismember(keys.submitted(redis_prefix), "racy::fork-1")
        shares_prefix(url, "racy::fork-1", 1)
        refused_again(tmp_path, url, client, queue)
