"""The one script registry: each Lua script next to the code that owns it, run by its SHA1 and loaded again
wherever the server forgot it (the stores' connection on both its paths, the worker's sync client)."""

from __future__ import annotations

import uuid
from importlib import resources
from pathlib import Path

import pytest
import redis

from castor.backends.redis import redis_backend
from castor.backends.redis.scripts import STORE_SCRIPTS, Script
from castor.seams import Charge
from tests.redis_support import free_port, redis_server


def _lua(package: str) -> set[str]:
    folder = resources.files(package) / "lua"
    return {f.name.removesuffix(".lua") for f in folder.iterdir() if f.name.endswith(".lua")}


def test_every_script_lives_next_to_its_owner_and_is_in_the_registry() -> None:
    from castor.fleet.scheduler._ops import SCRIPTS as FLEET
    from castor.fleet.workers._scripts import CLAIM, FAIL, FINISH, RETRY

    assert _lua("castor.backends.redis") == set(STORE_SCRIPTS)  # the stores' own, no coordinator's among them
    assert _lua("scheduler") == {s.name for s in FLEET.values()}  # the coordinator's fleet_*.lua
    assert all(name.startswith("fleet_") for name in _lua("scheduler"))
    assert _lua("workers") == {CLAIM.name, FINISH.name, FAIL.name, RETRY.name}
    # the worker's finish journals with the journal's own append script, inlined
    assert STORE_SCRIPTS["journal_append"].source in FINISH.source


@pytest.mark.parametrize("face", ["redis-py", "lean"])
def test_a_script_the_server_does_not_know_is_loaded_then_run(redis_url: str, face: str) -> None:
    from castor.fleet.workers._lean import LeanClient

    script = Script.from_source("echo", f"-- {uuid.uuid4().hex}\nreturn {{KEYS[1], ARGV[1]}}")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    lean = LeanClient(redis_url)
    try:
        assert client.script_exists(script.sha) == [False]
        execute = client.execute_command if face == "redis-py" else lean.call
        assert script.run(execute, ["k"], ["v"]) == ["k", "v"]
        assert client.script_exists(script.sha) == [True]
    finally:
        client.close()
        lean.close()


@pytest.mark.fleet  # starts a redis-server of its own
@pytest.mark.parametrize("lean", [True, False])
async def test_every_path_loads_its_scripts_again_after_a_flush(tmp_path: Path, lean: bool) -> None:
    from castor.fleet.workers._scripts import RUNNING, StepScripts

    from castor.fleet.wire import Job

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with redis_server(tmp_path, port):
        b = redis_backend(url, prefix="flush", lean_connection=lean)
        steps = StepScripts(url, "flush", worker="w")
        job = Job("r", 0, "t", {}, attempt=1)
        await b.budgets.open_run("r", {"api": 5}, {})
        assert steps.claim(job) == -1
        sync = redis.Redis(port=port)
        sync.script_flush()
        assert await b.budgets.charge("r", 1, {"api": 1}) == Charge(True)  # the stores' connection
        assert steps.claim(job) == RUNNING  # the worker's: its heartbeat says the first claim's worker runs it
        sync.close()
        steps.close()
        await b.close()
