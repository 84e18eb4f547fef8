"""The compose file's Redis users, on a real ``redis-server`` started with the very arguments the compose
file gives it: the fleet (workers, a coordinator kernel) works as user ``castor``, Flower works as user
``flower`` (it lists the workers and their tasks, and Redis refused it nothing), and ``flower``'s
credentials can neither decide a pending call for a human nor read or change any of Castor's state.
Every key the fleet made that ``flower`` may touch is one of kombu's."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import castor.lib as lib
from castor.backends.redis import keys
from tests.fleet.test_compose import SERVICES, compose_value, redis_users
from tests.redis_support import free_port, need_redis_server, redis_server

from .conftest import ROOT, Fleet, kernel_on, running_fleet
from .test_flower import _get, _listed, _wait_until_flower_sees_events, flower_process

pytestmark = [pytest.mark.fleet, pytest.mark.timeout(180)]

# kombu's keys under the fleet's key prefix, written out apart from the ACL's glob patterns
KOMBU_KEY = re.compile(
    r"castor:(castor\.[\w.-]+|_kombu\.[\w.]+|unacked(_index|_mutex)?|celeryev\.[\w-]+"
    r"|[0-9a-f-]{36}\.reply\.celery\.pidbox)(\x06\x16\d)?"
)


@pytest.fixture
def users_redis(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A redis-server with the compose file's users (its arguments after redis.conf, passwords filled in):
    the URLs of ``castor`` and ``flower``."""
    need_redis_server("runs Redis with the compose file's users")
    passwords = {"CASTOR_REDIS_PASSWORD": secrets.token_urlsafe(24),
                 "CASTOR_FLOWER_REDIS_PASSWORD": secrets.token_urlsafe(24)}
    command = SERVICES["redis"]["command"]
    assert command[:2] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    users = [compose_value(arg, passwords) for arg in command[2:]]  # the config file's port, dir, bind: ours
    port = free_port()
    urls = {
        "castor": f"redis://castor:{passwords['CASTOR_REDIS_PASSWORD']}@127.0.0.1:{port}/0",
        "flower": f"redis://flower:{passwords['CASTOR_FLOWER_REDIS_PASSWORD']}@127.0.0.1:{port}/0",
    }
    with redis_server(tmp_path, port, *users, url=urls["castor"]):
        yield urls


@pytest.fixture
def acl_fleet(tmp_path: Path, users_redis: dict[str, str]) -> Iterator[Fleet]:
    """The test fleet's two pools as user ``castor``, under the shipped prefixes the users are made for."""
    assert set(redis_users(SERVICES["redis"]["command"])) == {"default", "castor", "flower"}
    url = users_redis["castor"]
    with running_fleet(tmp_path, url, state=url, prefixes=("castor", "castor")) as made:
        yield made


@pytest.fixture
def flower_as_flower(acl_fleet: Fleet, users_redis: dict[str, str]) -> Iterator[str]:
    """``castor flower`` as user ``flower`` and without the secret, as the compose file starts it."""
    env = {k: v for k, v in acl_fleet.env.items() if k != "CASTOR_SECRET"}
    env.update(CASTOR_REDIS_URL=users_redis["flower"], CASTOR_BROKER_URL=users_redis["flower"])
    config = acl_fleet.config.with_name("flower.toml")
    config.write_text(re.sub(r'(?m)^secret = ".*"$', "", acl_fleet.config.read_text()))
    with flower_process(config, env, acl_fleet.config.with_name("flower.log")) as base:
        yield base


def refused(call: object) -> bool:
    """Whether Redis refused the call for want of permission."""
    try:
        call()  # type: ignore[operator]
    except redis.exceptions.NoPermissionError:
        return True
    return False


async def test_flower_works_as_the_broker_user_and_its_credentials_decide_nothing(
    acl_fleet: Fleet, users_redis: dict[str, str], flower_as_flower: str
) -> None:
    admin = redis.Redis.from_url(users_redis["castor"])
    admin.acl_log_reset()
    async with kernel_on(acl_fleet) as kernel:
        await _wait_until_flower_sees_events(flower_as_flower, kernel)

        async def agent() -> object:
            await lib.tool("search", query="acl")
            return await lib.tool("delete_file", path="/tmp/castor-acl-test")

        cp = await kernel.run(agent)
        assert cp.status == "SUSPENDED_FOR_HITL"
        mine, _ = await _listed(flower_as_flower, cp.pid, 1, timeout=15)
        assert "castor.tool.search" in mine  # task events reach Flower through the confined user
        workers = _get(f"{flower_as_flower}/api/workers?refresh=1")
        assert isinstance(workers, dict) and len(workers) == 2  # and so do its remote-control questions
        assert all("active_queues" in info for info in workers.values()), workers
        assert [e for e in admin.acl_log(count=100) if e.get("username") == "flower"] == []  # refused nothing

        flower = redis.Redis.from_url(users_redis["flower"])
        step = cp.pending_step
        state = [keys.approvals("castor", cp.pid), keys.journal("castor", cp.pid), keys.run_header("castor", cp.pid),
                 keys.approvals_pending("castor"), keys.decision_stream("castor"), keys.ledger("castor", cp.pid)]
        decision = '{"outcome": "approve", "by": "mallory"}'
        assert refused(lambda: flower.hset(state[0], f"d:{step}", decision))
        assert refused(lambda: flower.xadd(state[4], {"run": cp.pid, "step": str(step), "outcome": "approve"}))
        for key in state:
            assert refused(lambda key=key: flower.type(key)), key
            assert refused(lambda key=key: flower.delete(key)), key
        for command in (("FUNCTION", "FLUSH"), ("SCRIPT", "FLUSH"), ("SCAN", "0"), ("KEYS", "*"),
                        ("CONFIG", "GET", "dir"), ("SORT", "castor:castor.web", "BY", "nosort", "GET", "castor:*")):
            assert refused(lambda command=command: flower.execute_command(*command)), command
        assert refused(lambda: flower.eval("return redis.call('GET', KEYS[1])", 1, state[2]))  # Lua: the same keys
        flower.close()

        # nobody decided: the call still waits, and a human's approval (user castor) runs it once
        assert (await kernel.aload(cp.pid)).status == "SUSPENDED_FOR_HITL"
        await kernel.decide(cp.pid, "approve", by="alice")
        done = await kernel.run(agent, checkpoint=await kernel.aload(cp.pid))
        assert done.status == "COMPLETED" and done.syscall_log[-1].decided_by == "alice"
        assert acl_fleet.count("/tmp/castor-acl-test", "done") == 1

    reachable = [key.decode() for key in admin.scan_iter(count=1000)
                 if admin.acl_dryrun("flower", "TYPE", key) == b"OK"]
    assert reachable and all(KOMBU_KEY.fullmatch(key) for key in reachable), reachable
    admin.close()


def test_the_file_castor_redis_acl_prints_is_one_redis_loads(tmp_path: Path) -> None:
    need_redis_server("loads the printed ACL file into a redis-server")
    from castor.fleet import acl
    from castor.settings import load_settings

    fleet_pw, flower_pw = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    aclfile = tmp_path / "users.acl"
    aclfile.write_text(acl.acl_file(load_settings(ROOT / "config/castor.toml", env={}), fleet_pw, flower_pw))
    port = free_port()
    castor_url = f"redis://castor:{fleet_pw}@127.0.0.1:{port}/0"
    with redis_server(tmp_path, port, "--aclfile", str(aclfile), url=castor_url):
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=port).ping()  # the default user is off
        flower = redis.Redis.from_url(f"redis://flower:{flower_pw}@127.0.0.1:{port}/0")
        assert flower.lpush("castor:castor.fs", "x") == 1
        assert refused(lambda: flower.set("castor:decisions", "x"))
        flower.close()


def test_the_redis_health_check_passes_as_user_castor_only(users_redis: dict[str, str]) -> None:
    kind, check = SERVICES["redis"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL" and check.startswith("redis-cli ")
    url = re.fullmatch(r"redis://castor:(.+)@127\.0\.0\.1:(\d+)/0", users_redis["castor"])
    assert url is not None
    password, port = url.groups()
    check = check.replace("redis-cli ", f"redis-cli -p {port} ", 1)  # the container's Redis listens on 6379

    def passes(auth: str) -> bool:
        env = {"PATH": os.environ["PATH"], "REDISCLI_AUTH": auth}
        return subprocess.run(["sh", "-c", check], env=env, capture_output=True, timeout=10).returncode == 0

    assert SERVICES["redis"]["environment"]["REDISCLI_AUTH"] == "${CASTOR_REDIS_PASSWORD}"
    assert passes(password)
    assert not passes("not-the-password")  # redis-cli itself exits 0 on a refused AUTH: the check must not
