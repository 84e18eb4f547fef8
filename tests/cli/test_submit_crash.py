"""A ``castor submit`` that dies at the worst moment leaves its run submitted or not there at all, never stored
and unqueued: before, a submitter killed between storing the run and queueing it left a run no coordinator
would ever drive, and every later ``castor submit --pid`` of it was refused ("exists already").

The submitter is the real command line in a process of its own, killed (``os._exit``) just before or just
after its first write to Redis, whichever store call that write is.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis

from castor.backends.redis import keys
from tests.cli.test_create_races import RUN, scripts
from tests.cli.test_races import _env, castor

pytestmark = pytest.mark.fleet  # starts CLI processes

# Dies "before" or "after" the first write of a run's header, through any of the store's ways to write one.
DYING = '''
import os
import sys

from castor.backends.redis._client import RedisConnection
from castor.backends.redis.runs import RedisRunStore
from castor.cli import main

AFTER = sys.argv.pop(1) == "after"


def dying(cls, name):
    original = getattr(cls, name)

    async def write(self, *args, **kwargs):
        if AFTER:
            await original(self, *args, **kwargs)
        os._exit(9)

    setattr(cls, name, write)


for name in ("create", "save", "create_submitted"):
    if hasattr(RedisRunStore, name):
        dying(RedisRunStore, name)
dying(RedisConnection, "scripts_at_once")
sys.exit(main(sys.argv[1:]))
'''


def dies_submitting(cwd: Path, when: str, store: list[str]) -> None:
    (cwd / "dying.py").write_text(textwrap.dedent(DYING))
    died = subprocess.run([sys.executable, "dying.py", when, *store, "submit", *RUN], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert died.returncode == 9, died.stdout + died.stderr


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_submitter_that_dies_leaves_its_run_submitted_or_absent(
    tmp_path: Path, redis_url: str, redis_prefix: str, when: str
) -> None:
    scripts(tmp_path)
    store = ["--store", f"{redis_url}?prefix={redis_prefix}"]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    queue = keys.run_queue(redis_prefix)
    try:
        dies_submitting(tmp_path, when, store)
        listed = castor(tmp_path, *store, "ps").stdout
        if when == "before":
            assert client.lrange(queue, 0, -1) == [] and "twin" not in listed, listed
            again = castor(tmp_path, *store, "submit", *RUN)  # the pid is free: submitted now
            assert again.returncode == 0 and again.stdout.strip() == "twin", again.stdout + again.stderr
        else:
            assert "twin" in listed, listed
        assert client.lrange(queue, 0, -1) == ["twin"]  # stored means queued, once
        assert client.sismember(keys.submitted(redis_prefix), "twin")
        refused = castor(tmp_path, *store, "submit", *RUN)
        assert refused.returncode == 1 and "'twin' exists already" in refused.stderr, refused.stderr
        assert client.lrange(queue, 0, -1) == ["twin"]
    finally:
        client.close()
