"""Two operators starting a run under one chosen pid at the same moment, each in a process of its own:
two ``castor run --pid`` on one SQLite file, two ``castor submit --pid`` to one fleet. One starts the run;
the other is told in one line that it exists (and how to continue it), and starts nothing: before, both
passed the look for the pid, and both were told they started it (two ``submit`` queued the run twice).

The racers meet as in ``tests.cli.test_fork_races``: each waits, after its look found no run, for the other.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import redis

from castor.backends.redis import keys
from tests.cli.test_fork_races import AGENT, TOOLS, one_won, race
from tests.cli.test_races import castor, executions

pytestmark = pytest.mark.fleet  # starts CLI processes

RUN = ["agent.py:job", "--tool", "tools.py:wipe", "--destructive", "--tool", "tools.py:note", "--pid", "twin"]


def scripts(cwd: Path) -> None:
    (cwd / "tools.py").write_text(textwrap.dedent(TOOLS))
    (cwd / "agent.py").write_text(textwrap.dedent(AGENT))


def test_two_castor_runs_under_one_pid_start_one_run(tmp_path: Path) -> None:
    scripts(tmp_path)
    store = ["--store", f"sqlite:///{tmp_path / 'castor.db'}"]
    results = race(tmp_path, [["racer.py", *store, "run", *RUN, "--hitl", "approve-all"]] * 2)
    won = one_won(results, "twin")
    assert "COMPLETED" in won.stdout, won.stdout
    lost = next(r for r in results if r is not won)
    assert "continue it with: castor resume twin" in lost.stderr, lost.stderr
    assert executions(tmp_path) == 1 and executions(tmp_path, "notes.log") == 3  # one run ran, once
    listed = castor(tmp_path, *store, "ps").stdout.splitlines()
    assert len([line for line in listed if " twin " in f"{line} "]) == 1, listed


def test_two_castor_submits_under_one_pid_queue_one_run_once(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    scripts(tmp_path)
    store = ["--store", f"{redis_url}?prefix={redis_prefix}"]
    results = race(tmp_path, [["racer.py", *store, "submit", *RUN]] * 2)
    won = one_won(results, "twin")
    assert won.stdout.strip() == "twin", won.stdout
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert client.lrange(keys.run_queue(redis_prefix), 0, -1) == ["twin"]
    finally:
        client.close()
