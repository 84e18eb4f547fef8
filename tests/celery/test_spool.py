"""A finished step whose finish cannot reach Redis within ``[workers] outage_deadline`` is kept in the
worker's spool, never dropped, and journaled once when Redis is back (replayed at the next start)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
from castor.fleet.workers import _spool
from castor.fleet.workers._scripts import StepScripts, replay_spool

from castor.backends.redis import keys
from castor.checkpoint import new_record
from castor.fleet.wire import OK, Job, Reply
from tests.redis_support import free_port, need_redis_server, start_redis_server

pytestmark = pytest.mark.fleet  # starts processes (CLI, workers or redis-server)

AOF = ("--appendonly", "yes", "--appendfsync", "always")


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "redis-py"])
def test_a_finish_past_the_outage_deadline_is_spooled_and_journaled_once_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lean: bool
) -> None:
    from castor.fleet.workers import _lean

    if not lean:
        monkeypatch.setattr(_lean, "available", lambda url: False)
    monkeypatch.setattr(_spool, "REPLAY_EVERY", 3600.0)  # this process's own replays wait: the start replays
    need_redis_server("stops and starts a server of its own")
    port, data, spool = free_port(), tmp_path / "redis", tmp_path / "spool"
    data.mkdir()
    url = f"redis://127.0.0.1:{port}/0"
    server = start_redis_server(data, port, *AOF)
    try:
        scripts = StepScripts(url, "sp", outage=0.1, spool=str(spool))
        job = Job("run-1", 0, "rm", {}, reply_to="sp:replies")
        assert scripts.claim(job) == -1
        server.send_signal(signal.SIGTERM)  # Redis goes away once the tool has started ...
        server.wait(10)
        record = new_record({"tool_name": "rm", "arguments": {}}, "removed")
        assert scripts.finish(job, record, Reply("run-1:0", 0, OK, "removed")) is True  # ... kept, not lost
        assert len(list(spool.iterdir())) == 1
        assert (spool.stat().st_mode & 0o777, next(spool.iterdir()).stat().st_mode & 0o777) == (0o700, 0o600)
        scripts.close()
        server = start_redis_server(data, port, *AOF)
        assert replay_spool(url, "sp", str(spool)) == 1
        assert replay_spool(url, "sp", str(spool)) == 0
        assert list(spool.iterdir()) == []
        back = redis.Redis.from_url(url)
        journal = back.zrangebyscore(keys.journal("sp", "run-1"), 0, 0)
        assert len(journal) == 1 and b"removed" in journal[0]
        assert back.exists(keys.started_marker("sp", "run-1", 0), keys.heartbeat("sp", "run-1", 0)) == 0
        assert back.xlen("sp:replies") == 1
        # another fleet's Redis leaves the file alone
        assert replay_spool(f"redis://127.0.0.1:{free_port()}/0", "sp", str(spool)) == 0
        back.close()
    finally:
        server.kill()
        server.wait(10)


def test_a_live_worker_replays_its_spool_once_redis_is_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_spool, "REPLAY_EVERY", 0.2)
    need_redis_server("stops and starts a server of its own")
    port, data, spool = free_port(), tmp_path / "redis", tmp_path / "spool"
    data.mkdir()
    url = f"redis://127.0.0.1:{port}/0"
    server = start_redis_server(data, port, *AOF)
    try:
        scripts = StepScripts(url, "sp", outage=0.1, spool=str(spool))
        job = Job("run-1", 3, "rm", {})
        assert scripts.claim(job) == -1
        server.send_signal(signal.SIGTERM)
        server.wait(10)
        assert scripts.finish(job, new_record({"tool_name": "rm", "arguments": {}}, 1), Reply("run-1:3", 0, OK, 1))
        server = start_redis_server(data, port, *AOF)
        back = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while back.zcard(keys.journal("sp", "run-1")) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert back.zcard(keys.journal("sp", "run-1")) == 1
        deadline = time.monotonic() + 5
        while list(spool.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(spool.iterdir()) == []
        scripts.close()
        back.close()
    finally:
        server.kill()
        server.wait(10)


def test_a_finish_whose_redis_comes_back_within_the_outage_deadline_is_journaled_by_asking_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spool is the last resort: a finish that lost Redis is asked again, and when Redis is back
    within ``outage_deadline`` the step is journaled before ``finish`` returns, with nothing spooled (a
    spooled result waits for a replay, and for a worker that is still there to make it)."""
    monkeypatch.setattr(_spool, "REPLAY_EVERY", 3600.0)  # a spooled finish would stay spooled: seen below
    need_redis_server("stops and starts a server of its own")
    port, data, spool = free_port(), tmp_path / "redis", tmp_path / "spool"
    data.mkdir()
    url = f"redis://127.0.0.1:{port}/0"
    server = start_redis_server(data, port, *AOF)
    restarted: list[subprocess.Popen[bytes]] = []
    thread: threading.Thread | None = None
    try:
        scripts = StepScripts(url, "sp", outage=30.0, spool=str(spool))
        job = Job("run-1", 2, "rm", {}, reply_to="sp:replies")
        assert scripts.claim(job) == -1
        server.send_signal(signal.SIGTERM)  # Redis goes away while the tool runs ...
        server.wait(10)

        def restart() -> None:
            time.sleep(1.5)  # ... and comes back well within the deadline, after the finish was first refused
            restarted.append(start_redis_server(data, port, *AOF))

        thread = threading.Thread(target=restart)
        thread.start()
        record = new_record({"tool_name": "rm", "arguments": {}}, "removed")
        assert scripts.finish(job, record, Reply("run-1:2", 0, OK, "removed")) is True
        thread.join(15)
        assert restarted, "redis-server did not start again"
        back = redis.Redis.from_url(url)
        journal = back.zrangebyscore(keys.journal("sp", "run-1"), 2, 2)
        assert len(journal) == 1 and b"removed" in journal[0]  # journaled by the finish itself
        assert back.xlen("sp:replies") == 1
        assert not spool.exists() or list(spool.iterdir()) == []  # nothing left for a replay
        back.close()
        scripts.close()
    finally:
        if thread is not None:
            thread.join(15)  # the server it starts is stopped below, whatever happened
        for proc in [server, *restarted]:
            proc.kill()
            proc.wait(10)
