"""A new run submitted to the fleet is stored and queued in one transaction (``RedisRunStore.create_submitted``):
a submitter that stops has done both or neither; the same submit again (after a lost reply) is done already;
another's pid is refused and queues nothing; a pid whose earlier run expired is submitted afresh; the set of
submitted runs forgets the runs retention took."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from castor.backends.redis import keys, redis_backend
from castor.backends.redis.runs import RedisRunStore
from castor.backends.redis.scripts import STORE_SCRIPTS
from castor.errors import RunExistsError
from castor.fleet.client import FleetClient, new_run
from castor.seams import Backend
from tests.redis.test_redis_runs import checkpoint
from tests.redis_support import free_port, redis_server

AGENT = str(Path(__file__).with_name("test_redis_runs.py")) + ":checkpoint"


def store(backend: Backend) -> RedisRunStore:
    assert isinstance(backend.runs, RedisRunStore)
    return backend.runs


def queue_of(redis_url: str, prefix: str) -> list[str]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return client.lrange(keys.run_queue(prefix), 0, -1)  # type: ignore[return-value]
    finally:
        client.close()


async def test_stored_and_queued_once_and_the_same_submit_again_is_done(
    backend: Backend, redis_url: str, redis_prefix: str
) -> None:
    cp = checkpoint("twin")
    await store(backend).create_submitted(cp)
    await store(backend).create_submitted(cp)  # its retry after a lost reply: nothing more
    assert queue_of(redis_url, redis_prefix) == ["twin"]
    loaded = await backend.runs.load("twin")
    assert loaded is not None and loaded.model_dump() == cp.model_dump()
    with pytest.raises(RunExistsError, match="'twin' exists already"):
        await store(backend).create_submitted(checkpoint("twin"))  # another submit of that pid
    with pytest.raises(RunExistsError):
        await backend.runs.create(checkpoint("twin"))
    assert queue_of(redis_url, redis_prefix) == ["twin"]


async def test_a_pid_stored_by_another_is_neither_queued_nor_marked(
    backend: Backend, redis_url: str, redis_prefix: str
) -> None:
    await backend.runs.create(checkpoint("embedded"))  # `castor run --pid embedded`, driven in its process
    with pytest.raises(RunExistsError):
        await store(backend).create_submitted(checkpoint("embedded"))
    assert queue_of(redis_url, redis_prefix) == []
    client = FleetClient(redis_url, redis_prefix)
    try:
        assert not await client.was_submitted("embedded")
    finally:
        await client.close()


async def test_a_pid_whose_run_expired_is_submitted_afresh_and_the_set_forgets_it(
    redis_url: str, redis_prefix: str
) -> None:
    backend = redis_backend(redis_url, prefix=redis_prefix, retention_seconds=1)
    client = FleetClient(redis_url, redis_prefix)
    try:
        first = checkpoint("nightly")
        await store(backend).create_submitted(first)
        first.status = "COMPLETED"
        await backend.runs.save(first)  # its keys expire in a second
        time.sleep(2.2)
        assert await backend.runs.load("nightly") is None
        assert await client.was_submitted("nightly")  # not pruned yet: the prune runs with a listing
        await store(backend).create_submitted(checkpoint("nightly"))  # before: "submitted already", never queued
        assert queue_of(redis_url, redis_prefix) == ["nightly", "nightly"]
        await backend.runs.delete("nightly")
        assert not await client.was_submitted("nightly")
        other = checkpoint("weekly")
        await store(backend).create_submitted(other)
        other.status = "COMPLETED"
        await backend.runs.save(other)
        time.sleep(2.2)
        assert [r.pid for r in await backend.runs.list()] == []  # the listing prunes what expired
        assert not await client.was_submitted("weekly")
    finally:
        await client.close()
        await backend.close()


async def test_the_fleet_client_submits_a_new_run_in_one_transaction(redis_url: str, redis_prefix: str) -> None:
    backend = redis_backend(redis_url, prefix=redis_prefix)
    client = FleetClient(redis_url, redis_prefix)
    calls: list[str] = []
    transaction = RedisRunStore.create_submitted

    async def spy(self: RedisRunStore, cp: object) -> None:
        calls.append("one transaction")
        await transaction(self, cp)  # type: ignore[arg-type]

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(RedisRunStore, "create_submitted", spy)
            pid = await client.submit(backend, new_run(AGENT, [], pid="fleet-run"))
        assert pid == "fleet-run" and calls == ["one transaction"]
        assert queue_of(redis_url, redis_prefix) == ["fleet-run"]
        with pytest.raises(RunExistsError):
            await client.submit(backend, new_run(AGENT, [], pid="fleet-run"))
        assert queue_of(redis_url, redis_prefix) == ["fleet-run"]
    finally:
        await client.close()
        await backend.close()


@pytest.mark.parametrize("knows", [(), ("run_save",), ("fleet_submit",)])
async def test_a_submit_to_a_server_that_knows_some_of_the_scripts(tmp_path: Path, knows: tuple[str, ...]) -> None:
    # A server restarted, flushed, or holding an older Castor's scripts (a new release changed one): with
    # EVALSHA the script it lacked failed alone and the other ran; a run was stored and never queued.
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with redis_server(tmp_path, port):
        backend = redis_backend(url, prefix="forgot")
        sync = redis.Redis(port=port, decode_responses=True)
        try:
            for name in knows:
                sync.script_load(STORE_SCRIPTS[name].source)
            await store(backend).create_submitted(checkpoint("after-flush"))
            assert sync.lrange(keys.run_queue("forgot"), 0, -1) == ["after-flush"]
            assert sync.sismember(keys.submitted("forgot"), "after-flush")
            assert await backend.runs.load("after-flush") is not None
        finally:
            sync.close()
            await backend.close()
