"""``castor worker --ping --pool P``: the worker containers' health check, against live workers. It passes
for a pool a worker consumes (under the fleet's broker key prefix, where ``celery inspect ping`` finds
nobody), and fails in one line for a pool nobody consumes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from castor.settings import Settings

from .conftest import ROOT, Fleet


def ping(fleet: Fleet, *argv: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "castor", "worker", "--ping", "--config", str(config or fleet.config), *argv]
    return subprocess.run(cmd, cwd=ROOT, env=fleet.env, capture_output=True, text=True, timeout=60)


def test_ping_finds_the_live_workers_of_each_pool(fleet: Fleet) -> None:
    for pool in ("fs", "web"):
        done = ping(fleet, "--pool", pool, "--timeout", "3")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"consume {fleet.settings.queue_of(pool)}: {pool}-" in done.stdout


def test_ping_fails_in_one_line_when_no_worker_consumes_the_pool(fleet: Fleet, tmp_path: Path) -> None:
    # The same fleet under another queue prefix: its workers consume other queues, so none answers for it.
    text = fleet.config.read_text().replace('queue_prefix = "', 'queue_prefix = "other-', 1)
    other = tmp_path / "other.toml"
    other.write_text(text)
    done = ping(fleet, "--pool", "web", "--timeout", "1", config=other)
    assert done.returncode == 1
    assert done.stdout.strip().endswith("(none answered within 1s)")
    assert "no worker on this host consumes" in done.stdout
    assert done.stdout.count("\n") == 1


def test_ping_refuses_an_unknown_pool(fleet: Fleet) -> None:
    done = ping(fleet, "--pool", "nope")
    assert done.returncode == 1 and "unknown pool 'nope'" in done.stderr and done.stderr.count("\n") == 1


def test_answers_of_another_shape_count_for_no_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anyone who reaches the broker may answer the health check's question: an answer that is not a list of
    queues counts for nobody, and the check still finds the worker that answered rightly."""
    import socket

    from castor.fleet.workers import ping as ping_module

    settings = Settings()
    queue = settings.queue_of("default")
    host = socket.gethostname()
    answers = {f"forged@{host}": 5, f"odd@{host}": None, f"text@{host}": "queues", f"items@{host}": [7, "x"],
               f"real@{host}": [{"name": queue}]}
    monkeypatch.setattr(ping_module, "_active_queues", lambda *_: answers)
    assert ping_module.pool_workers(settings, "default") == [f"real@{host}"]
