"""``castor redis-acl``: the broker-only Redis user reaches no state key, refuses configs that would let it,
and the file it prints holds no password in the clear. (Loaded into a real Redis with a fleet and Flower
on it: ``tests/celery/test_redis_acl.py``.)"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from castor.cli import main
from castor.errors import ConfigError
from castor.fleet import acl
from castor.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
FLEET_PW, FLOWER_PW = "fleet-password-0123456789", "flower-password-0123456789"


def test_with_the_shipped_prefixes_the_broker_user_reaches_no_state_key() -> None:
    samples = list(acl._state_key_samples("castor"))
    # every kind of state key is among the samples: the run's own, the indexes, the reply streams, the MMU's
    for part in (":journal", ":approvals", ":budget", ":run", ":lease", "runs:all", "approvals:pending",
                 "decisions", "replies:{", "scope:{", ":mmu:"):
        assert any(part in key for key in samples), part
    assert acl.reached_state_keys(load_settings(ROOT / "config/castor.toml", env={})) == []
    assert acl.reached_state_keys(Settings()) == []
    # and yet each pattern takes the broker's own keys
    keys = acl.broker_keys(Settings())
    for broker_key in ("castor:castor.fs", "castor:castor.fs\x06\x163", "castor:_kombu.binding.castor.fs",
                       "castor:unacked", "castor:unacked_index", "castor:celeryev.1b7c",
                       "castor:cd843e31-28f0-3f7e-adca-13ace484bb40.reply.celery.pidbox"):
        assert any(fnmatchcase(broker_key, pattern) for pattern in keys), broker_key


def test_no_key_pattern_of_the_printed_broker_user_reaches_a_state_key() -> None:
    """Every ``~pattern`` of the broker user's line as ``acl_file`` prints it (not only ``broker_keys``, the
    patterns ``reached_state_keys`` checks) is held to one key of every kind of state: none matches."""
    settings = load_settings(ROOT / "config/castor.toml", env={})
    [line] = [line for line in acl.acl_file(settings, FLEET_PW, FLOWER_PW).splitlines()
              if line.split()[1] == acl.BROKER_USER]
    patterns = [rule[1:] for rule in line.split() if rule.startswith("~")]
    assert patterns
    samples = list(acl._state_key_samples(settings.redis.prefix))
    assert [key for key in samples if any(fnmatchcase(key, p) for p in patterns)] == []


def test_prefixes_that_nest_one_in_the_other_are_refused() -> None:
    nested = Settings(redis={"prefix": "castor:castor.state"})
    reached = acl.reached_state_keys(nested)
    assert reached and all(key.startswith("castor:castor.state:") for key in reached)
    with pytest.raises(ConfigError, match=r"nests in \[broker\] queue_prefix .* such as 'castor:castor.state:"):
        acl.acl_file(nested, FLEET_PW, FLOWER_PW)


def test_short_or_shared_passwords_and_a_rabbitmq_broker_are_refused() -> None:
    with pytest.raises(ConfigError, match="CASTOR_FLOWER_REDIS_PASSWORD must be at least 16"):
        acl.acl_file(Settings(), FLEET_PW, "short")
    with pytest.raises(ConfigError, match="must differ"):
        acl.acl_file(Settings(), FLEET_PW, FLEET_PW)
    with pytest.raises(ConfigError, match="the broker is amqp, not Redis"):
        acl.acl_file(Settings(broker={"url": "amqp://guest:guest@127.0.0.1:5672//"}), FLEET_PW, FLOWER_PW)


def test_the_command_prints_the_two_users_with_hashed_passwords(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CASTOR_REDIS_PASSWORD", FLEET_PW)
    monkeypatch.delenv("CASTOR_FLOWER_REDIS_PASSWORD", raising=False)
    config = str(ROOT / "config/castor.toml")
    assert main(["redis-acl", "--config", config]) == 1
    err = capsys.readouterr().err
    assert "CASTOR_FLOWER_REDIS_PASSWORD is not set" in err and "secrets.token_urlsafe" in err
    monkeypatch.setenv("CASTOR_FLOWER_REDIS_PASSWORD", FLOWER_PW)
    assert main(["redis-acl", "--config", config, "--flower-user", "watcher"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["default", "castor", "watcher"]
    assert lines[0].startswith("user default off")
    assert "~* &*" in lines[1] and lines[1].endswith("+@all")
    assert "~castor:castor.*" in lines[2] and "~*" not in lines[2].split() and "&castor:/0.celeryev/*" in lines[2]
    text = "\n".join(lines)
    assert FLEET_PW not in text and FLOWER_PW not in text
    assert f"#{acl._sha256(FLOWER_PW)}" in lines[2]


def test_behind_sentinel_the_broker_users_channels_name_the_urls_database() -> None:
    """kombu names a fan-out channel after the broker URL's database: behind Sentinel, the one after the
    service's name (``castor.backends.redis.sentinel``), not a path read as a ``redis://`` URL's."""
    settings = Settings(redis={"url": "redis+sentinel://:pw@h1,h2:26380/main/3"})
    assert acl.broker_channels(settings) == ("castor:/3.*", "castor:/3.celeryev/*")
    assert acl.broker_channels(Settings(redis={"url": "redis+sentinel://h1/main"}))[0] == "castor:/0.*"
