"""The worker's lean Redis client (``castor.fleet.workers._lean``): a socket per pool thread, reconnected when the
server closed it while idle, never a blind resend of a command that may have run; the claim and finish
scripts over it, loaded again when the server forgot them."""

from __future__ import annotations

import select
import threading
import time
from pathlib import Path

import pytest
import redis
from castor.fleet.workers._lean import LeanClient
from castor.fleet.workers._scripts import DUPLICATE, Delivery, StepScripts

from castor import BackendUnavailable
from castor.backends.redis import keys
from castor.checkpoint import new_record
from castor.fleet.wire import OK, Job, Reply
from tests.redis_support import free_port, redis_server, reply_dropping_proxy, silent_port

from .conftest import REDIS_URL


def test_each_thread_has_a_socket_of_its_own_and_close_ends_them() -> None:
    client = LeanClient(REDIS_URL)
    ids: list[int] = []
    threads = [threading.Thread(target=lambda: ids.append(client.call("CLIENT", "ID"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    mine = client.call("CLIENT", "ID")
    assert len({*ids, mine}) == 5
    client.close()
    listed = redis.Redis.from_url(REDIS_URL).client_list()
    assert not {int(c["id"]) for c in listed} & {*ids, mine}


def test_a_socket_the_server_closed_while_idle_is_replaced() -> None:
    client = LeanClient(REDIS_URL)
    first = client.call("CLIENT", "ID")
    admin = redis.Redis.from_url(REDIS_URL)
    admin.client_kill_filter(_id=first)
    admin.close()
    closed, _, _ = select.select([client._local.conn.sock], [], [], 5)  # the close reaches this side
    assert closed
    assert client.call("PING") == "PONG"  # sent on a new socket: the old one was closed before the send
    assert client.call("CLIENT", "ID") != first
    client.close()


def test_a_reply_that_never_comes_is_unavailable_not_sent_again() -> None:
    with silent_port() as port:
        client = LeanClient(f"redis://:pw@127.0.0.1:{port}/0", timeout=0.3)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as caught:
            client.call("PING")
    assert time.monotonic() - started < 2
    assert "pw" not in str(caught.value) and "***" in str(caught.value)
    client.close()


@pytest.mark.fleet
def test_a_wrong_password_is_refused_clearly(tmp_path: Path) -> None:
    port = free_port()
    with redis_server(tmp_path, port):
        redis.Redis(port=port).config_set("requirepass", "right")
        good = LeanClient(f"redis://:right@127.0.0.1:{port}/2")
        assert good.call("SET", "k", "v") == "OK"
        assert redis.Redis(port=port, password="right", db=2).get("k") == b"v"
        good.close()
        with pytest.raises(BackendUnavailable, match="refused the connection") as caught:
            LeanClient(f"redis://:wrong@127.0.0.1:{port}/2").call("PING")
        assert "wrong" not in str(caught.value)


@pytest.mark.fleet
def test_claim_and_finish_scripts_are_loaded_again_after_a_flush(tmp_path: Path) -> None:
    port = free_port()
    with redis_server(tmp_path, port):
        scripts = StepScripts(f"redis://127.0.0.1:{port}/0", "lean")
        job = Job("run-1", 0, "noop", {})
        assert scripts.claim(job) == -1  # this attempt starts the step
        redis.Redis(port=port).script_flush()
        redis.Redis(port=port).delete(keys.heartbeat("lean", "run-1", 0))  # its worker is gone
        assert scripts.claim(job) == 0  # started before by attempt 0, never finished: in doubt
        scripts.close()


def _warm_scripts(port: int, lean: bool, monkeypatch: pytest.MonkeyPatch) -> StepScripts:
    """Scripts straight on the server at ``port``, both loaded there (so that a proxied ``EVALSHA`` is the
    script's one run); later ``StepScripts`` are on redis-py unless ``lean``; lost tries are asked again fast."""
    from castor.fleet.workers import _lean, _scripts

    monkeypatch.setattr(_scripts, "CLAIM_PAUSES", (0.05,))
    direct = StepScripts(f"redis://127.0.0.1:{port}/0", "lost")
    warm = Job("warm", 0, "noop", {})
    assert direct.claim(warm) == -1
    assert direct.finish(warm, new_record({"tool_name": "noop", "arguments": {}}, None), Reply("warm:0", 0, OK, None))
    if not lean:
        monkeypatch.setattr(_lean, "available", lambda url: False)
    return direct


@pytest.mark.fleet
@pytest.mark.parametrize("lean", [True, False], ids=["lean", "redis-py"])
def test_a_claim_whose_reply_was_lost_is_asked_again_under_its_receipt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lean: bool
) -> None:
    # Neither client resends it (the claim ran); asked again under the same receipt, the script gives the
    # first answer: this handling owns the step. Sent blindly again, it would look like a second copy.
    port = free_port()
    with redis_server(tmp_path, port):
        direct = _warm_scripts(port, lean, monkeypatch)
        job = Job("run-1", 0, "noop", {})
        with reply_dropping_proxy(port, b"EVALSHA", times=1) as (proxy, dropped):
            scripts = StepScripts(f"redis://127.0.0.1:{proxy}/0", "lost")
            assert scripts.claim(job, Delivery("run-1:0#0-a/0")) == -1  # the first answer, again
            scripts.close()
        assert len(dropped) == 1
        server = redis.Redis(port=port)
        assert list(server.hgetall(keys.deliveries("lost", "run-1", 0))) == [b"run-1:0#0-a/0"]
        assert server.get(keys.started_marker("lost", "run-1", 0)) == b"0"
        # another handling of the same message (a second copy) is still a duplicate
        assert direct.claim(job, Delivery("run-1:0#0-a/0")) == DUPLICATE
        # and a claim that never gets through fails after its tries, for the task to fail
        with reply_dropping_proxy(port, b"EVALSHA", times=3) as (proxy, dropped):
            scripts = StepScripts(f"redis://127.0.0.1:{proxy}/0", "lost")
            with pytest.raises((BackendUnavailable, redis.ConnectionError)):
                scripts.claim(Job("run-2", 0, "noop", {}), Delivery("run-2:0#0-b/0"))
            scripts.close()
        assert len(dropped) == 2  # the try and the one more
        direct.close()


@pytest.mark.fleet
@pytest.mark.parametrize("lean", [True, False], ids=["lean", "redis-py"])
def test_a_finish_whose_reply_was_lost_is_asked_again_and_journals_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lean: bool
) -> None:
    port = free_port()
    with redis_server(tmp_path, port):
        direct = _warm_scripts(port, lean, monkeypatch)
        job = Job("run-1", 0, "noop", {}, reply_to="lost:replies")
        assert direct.claim(job, Delivery("run-1:0#0-a/0")) == -1
        record = new_record({"tool_name": "noop", "arguments": {}}, 7)
        with reply_dropping_proxy(port, b"EVALSHA", times=1) as (proxy, dropped):
            scripts = StepScripts(f"redis://127.0.0.1:{proxy}/0", "lost")
            assert scripts.finish(job, record, Reply("run-1:0", 0, OK, 7)) is True  # written, as far as it knows
            scripts.close()
        assert len(dropped) == 1
        server = redis.Redis(port=port)
        assert server.zcard(keys.journal("lost", "run-1")) == 1
        assert server.exists(keys.started_marker("lost", "run-1", 0), keys.deliveries("lost", "run-1", 0)) == 0
        assert server.xlen("lost:replies") == 2  # the lost try's reply and the one more: the coordinator reads one
        direct.close()
