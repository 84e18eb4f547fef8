"""A tool that raised for good while Redis was away: its worker asks again, as a finish does, until Redis is
back within ``[workers] outage_deadline``, so the failure is recorded once and answered, not left as a start
with no end (in doubt, for a human). Against a ``redis-server`` of the test's own, with its append-only file."""

from __future__ import annotations

import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from castor.fleet.workers._scripts import StepScripts
from castor.fleet.workers.runtime import WorkerRuntime

from castor.backends.redis import keys
from castor.fleet.wire import ERROR, Job, Reply, encode, task_name
from castor.registry import ToolRegistry
from castor.seams import ToolCall
from castor.settings import Settings
from tests.redis_support import free_port, need_redis_server, start_redis_server

pytestmark = pytest.mark.fleet  # starts redis-server

AOF = ("--appendonly", "yes", "--appendfsync", "always")
SECRET = secrets.token_hex(32)


class Server:
    """A ``redis-server`` with AOF on a free port, which the test stops and starts again."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.port = directory, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.procs = [start_redis_server(directory, self.port, *AOF)]

    def stop(self) -> None:
        self.procs[-1].send_signal(signal.SIGTERM)
        self.procs[-1].wait(10)

    def start_later(self, after: float) -> threading.Thread:
        def start() -> None:
            time.sleep(after)
            self.procs.append(start_redis_server(self.directory, self.port, *AOF))

        thread = threading.Thread(target=start)
        thread.start()
        return thread

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    need_redis_server("stops and starts a server of its own")
    made = Server(tmp_path)
    try:
        yield made
    finally:
        made.close()


def test_a_failure_asked_again_is_recorded_once_and_answered_each_time(server: Server) -> None:
    """The second ask is a lost connection's retry of a call that ran: the token tells, nothing twice."""
    scripts = StepScripts(server.url, "fo", SECRET)
    job = Job("run-1", 0, "rm", {}, reply_to="fo:replies", token="t-1")
    try:
        assert scripts.claim(job) == -1
        for _ in range(2):
            scripts.fail(job, '{"step": 0}', Reply("run-1:0", 0, ERROR, None, "OSError", "disk full", True), 60)
    finally:
        scripts.close()
    back = redis.Redis.from_url(server.url)
    assert back.lrange(keys.failures("fo", "run-1"), 0, -1) == [b'{"step": 0}']
    assert back.exists(keys.started_marker("fo", "run-1", 0), keys.heartbeat("fo", "run-1", 0)) == 0
    assert back.sismember(keys.spent_tokens("fo", "run-1", 0), "t-1")
    assert back.xlen("fo:replies") == 2  # the coordinator reads the first
    back.close()


def test_a_tool_that_raised_while_redis_was_away_is_answered_with_its_failure_once_redis_is_back(
    server: Server,
) -> None:
    """In the worker's own code: the tool stops Redis, then raises; Redis is back 1.5 s later. The failure is
    recorded once, the step's start dropped (not in doubt), the token spent, and the reply sent."""
    restarts: list[threading.Thread] = []

    def rm(path: str) -> str:
        server.stop()
        restarts.append(server.start_later(1.5))
        raise OSError("disk full")

    settings = Settings(redis={"url": server.url, "prefix": "fo"}, security={"secret": SECRET},
                        workers={"outage_deadline": 30})
    runtime = WorkerRuntime(settings, ToolRegistry([rm]))
    arguments = {"path": "/tmp/x"}
    replies = keys.reply_stream("fo", "co-1")
    kwargs = encode(ToolCall("run-2", 0, "rm", arguments, checked=arguments), replies, SECRET)
    try:
        outcome = runtime.handle(kwargs, task_name("rm"))
    finally:
        for thread in restarts:
            thread.join(15)
        runtime.close()
    assert outcome.status == ERROR and "OSError: disk full" in outcome.detail, outcome
    back = redis.Redis.from_url(server.url)
    failures = back.lrange(keys.failures("fo", "run-2"), 0, -1)
    assert len(failures) == 1 and b"disk full" in failures[0], failures
    assert back.exists(keys.started_marker("fo", "run-2", 0)) == 0  # not in doubt: a resume may start it afresh
    assert back.sismember(keys.spent_tokens("fo", "run-2", 0), kwargs["token"])
    assert back.xlen(replies) == 1
    back.close()


async def test_a_failure_recorded_once_redis_is_back_settles_a_call_that_looked_in_doubt(server: Server) -> None:
    """Redis came back just now (its uptime is under the grace): a call whose step is started, with no
    record and no reply, is watched through the grace rather than said in doubt at once. Its worker, asking
    again through the outage, records the tool's failure meanwhile: the call is answered with it."""
    from castor.backends.redis import RedisConnection, redis_backend
    from castor.checkpoint import StepFailure
    from castor.errors import RemoteToolError
    from castor.executors._late import DEADLINE, LateCalls

    settings = Settings(redis={"url": server.url, "prefix": "fo"}, security={"secret": SECRET})
    arguments = {"path": "/tmp/x"}
    call = ToolCall("run-3", 0, "rm", arguments, checked=arguments)
    kwargs = encode(call, keys.reply_stream("fo", "co-1"), SECRET)
    job = Job("run-3", 0, "rm", arguments, token=kwargs["token"])
    scripts = StepScripts(server.url, "fo", SECRET, worker="w-1", heartbeat=1.0)
    assert scripts.claim(job) == -1  # the worker started the step ...
    failure = StepFailure(step=0, tool_name="rm", arguments=arguments, error_type="OSError", message="disk full")

    def recorded_late() -> None:  # ... and records its tool's failure a moment after the call's deadline
        time.sleep(0.8)
        scripts.fail(job, failure.model_dump_json(), Reply("run-3:0", 0, ERROR, None, "OSError", "disk full", True), 60)

    backend = redis_backend(server.url, prefix="fo")
    conn = RedisConnection(server.url)
    late = LateCalls(settings, lambda: conn, backend.journal)
    worker = threading.Thread(target=recorded_late)
    worker.start()
    try:
        with pytest.raises(RemoteToolError, match="OSError: disk full"):
            await late.settle(call, "fs", 1.0, DEADLINE, kwargs)
    finally:
        worker.join(10)
        scripts.close()
        await conn.close()
        await backend.close()
