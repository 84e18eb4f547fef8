"""``castor.toml`` validation, config discovery, and the deadlines the broker's visibility timeout follows:
no broker, no Redis (the worker processes that check the same things for real: tests/celery/test_worker_cli.py)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import get_args

import pytest
from castor.fleet.workers._preflight import consumer_timeout_warning
from castor.fleet.workers.main import POOL_IMPLEMENTATIONS, worker_registry
from pydantic import ValidationError

from castor import castor_tool
from castor.cli import main
from castor.errors import ConfigError, InvalidValueError
from castor.fleet.celery_config import celery_config
from castor.registry import ToolRegistry
from castor.settings import (
    REPLY_GRACE,
    Settings,
    WorkerPool,
    WorkersSection,
    broker_visibility,
    call_deadline,
    find_config,
    load_settings,
    visibility_warning,
)

HOUR = 3600


@castor_tool(timeout_seconds=HOUR)
def long_export(table: str) -> str:
    """A tool whose deadline only its code declares."""
    return table


@castor_tool(timeout_seconds=HOUR, retryable=True)
def long_retried(table: str) -> str:
    """The same, retried with backoff when it raises."""
    return table


def write(tmp_path: Path, text: str, name: str = "castor.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- validation ------------------------------------------------------------------------------------

BAD_CONFIGS = {
    "unknown section": ("[pool]\nfs = []\n", r"unknown section \[pool\]; known sections: .*pools"),
    "unknown key": ("[workers]\ncolour = 'red'\n", r"toml: unknown key 'colour' in \[workers\]"),
    "wrong type": ("[workers]\nconcurrency = 'four'\n", r"\[workers\] concurrency has the wrong type \(str\)"),
    "boolean as a number": ("[workers]\nconcurrency = true\n", r"\[workers\] concurrency has the wrong type"),
    "bad execution pool": ("[workers]\npool = 'gevent'\n", r"\[workers\] pool must be threads, prefork or solo"),
    "a tool in two pools": ("[pools]\nfs = ['rm']\nweb = ['rm']\n", r"tool 'rm' is in two pools, 'fs' and 'web'"),
    "pool not a list": ("[pools]\nfs = 'rm'\n", r"pools.fs must be a list of strings"),
    "section not a table": ("workers = 3\n", r"\[workers\] must be a table"),
    "negative timeout": ("[tools]\ntimeouts = { rm = -1 }\n", r"\[tools\] timeouts.rm = -1 is out of range"),
    "negative budget": ("[budgets]\napi = -1\n", r"budget 'api' must be a non-negative number"),
    "zero heartbeat": ("[workers]\nheartbeat = 0\n", r"\[workers\] heartbeat = 0(\.0)? is out of range"),
    "negative outage deadline": ("[workers]\noutage_deadline = -1\n", r"\[workers\] outage_deadline = -1(\.0)? is out"),
    "pool tool not imported": (
        "[tools]\nimport = ['t.py:ls']\n[pools]\nfs = ['rm']\n",
        r"pools.fs names tools that \[tools\] import does not: rm",
    ),
    "broker of no scheme castor runs on": ("[broker]\nurl = 'kafka://h'\n", r"starts with kafka://"),
    "not toml": ("[workers\n", r"is not valid TOML"),
    "a list of non-strings": ("[tools]\nimport = ['t.py:a', 1]\n", r"tools.import must be a list of strings, got \['t"),
    "a list that is none": ("[tools]\ndestructive = 'rm'\n", r"\[tools\] destructive has the wrong type \(str\)"),
    "an integer written as a float": ("[workers]\nconcurrency = 4.0\n", r"concurrency = 4.0 is out of range: it must"),
    "a source section": ("[source]\nx = 1\n", r"unknown section \[source\]"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_a_bad_config_is_one_config_error_naming_the_file_and_the_problem(tmp_path: Path, case: str) -> None:
    text, message = BAD_CONFIGS[case]
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as raised:
        load_settings(path, env={})
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_a_missing_config_file_is_named() -> None:
    with pytest.raises(ConfigError, match=r"config file /nowhere/castor\.toml does not exist"):
        load_settings("/nowhere/castor.toml", env={})


def test_a_good_config_and_the_environments_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "[workers]\nconcurrency = 8\npool = 'prefork'\n[pools]\nfs = ['rm']\n")
    settings = load_settings(path, env={"CASTOR_REDIS_URL": "redis://elsewhere:1/2"})
    assert (settings.workers.concurrency, settings.workers.pool, settings.redis.url) == (8, "prefork", "redis://elsewhere:1/2")
    assert settings.pool_of("rm") == "fs" and settings.pool_of("ls") == "default"


def test_a_worker_of_a_pool_the_config_does_not_define_is_refused(tmp_path: Path) -> None:
    tools = write(tmp_path, "def rm(path: str) -> str:\n    return path\n", "tools.py")
    settings = load_settings(write(tmp_path, f"[tools]\nimport = ['{tools}:rm']\n[pools]\nfs = ['rm']\n"), env={})
    with pytest.raises(ConfigError, match=r"unknown pool 'nope' in .*castor.toml; pools: default, fs"):
        worker_registry(settings, "nope")
    with pytest.raises(ConfigError, match="tool 'rm' runs on pool 'fs'"):
        worker_registry(settings, "default", [f"{tools}:rm"])
    assert [spec.name for spec in worker_registry(settings, "fs")] == ["rm"]


def test_without_pools_a_worker_serves_the_tools_it_is_given_on_any_pool(tmp_path: Path) -> None:
    source = "def rm(path: str) -> str:\n    return path\n\ndef ls() -> list:\n    return []\n"
    tools = write(tmp_path, source, "tools.py")
    registry = worker_registry(Settings(), "fs", [f"{tools}:rm", f"{tools}:ls"])
    assert sorted(spec.name for spec in registry) == ["ls", "rm"]
    with pytest.raises(ConfigError, match="unknown pool 'fs'"):  # with no tools given, nothing says what to serve
        worker_registry(Settings(), "fs")


# --- the schema: a frozen pydantic model per section -------------------------------------------------


def test_settings_built_in_python_are_validated_as_a_file_is() -> None:
    settings = Settings(workers={"concurrency": 8, "pool": "prefork"}, pools={"fs": ["rm"]}, source="fleet.toml")
    assert (settings.workers.concurrency, settings.workers.pool, settings.pool_of("rm")) == (8, "prefork", "fs")
    assert Settings(workers=WorkersSection(concurrency=8)).workers == WorkersSection(concurrency=8)
    assert load_settings(None, env={}) == Settings()  # the defaults: stated once, on the fields
    changed = settings.updated(redis={"prefix": "team"})
    assert (changed.redis.prefix, changed.redis.url, changed.workers.concurrency) == ("team", Settings().redis.url, 8)
    with pytest.raises(InvalidValueError, match=r"^fleet.toml: \[flower\] port = 0 is out of range: it must be"):
        settings.updated(flower={"port": 0})  # a change is validated again
    with pytest.raises(ConfigError, match=r"^fleet.toml: unknown key 'colour' in \[workers\]; known keys: "):
        settings.updated(workers={"colour": "red"})
    with pytest.raises(ValidationError, match="frozen"):
        settings.workers.concurrency = 2  # type: ignore[misc]


def test_the_pool_implementations_are_listed_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert POOL_IMPLEMENTATIONS == get_args(WorkerPool) == ("threads", "prefork", "solo")
    assert main(["worker", "--pool", "p", "--pool-impl", "gevent"]) == 2
    err = capsys.readouterr().err
    choices = err.split("invalid choice: 'gevent' (choose from ")[1]
    assert all(impl in choices for impl in POOL_IMPLEMENTATIONS)


def test_the_secret_never_shows_in_the_settings_repr() -> None:
    secret = secrets.token_hex(32)
    settings = Settings(security={"secret": secret}, flower={"basic_auth": "admin:hunter2"})
    assert secret not in repr(settings) and "hunter2" not in repr(settings) and secret not in str(settings)


# --- where a command finds its config ---------------------------------------------------------------


def test_a_config_is_found_in_the_environment_then_the_working_directory(tmp_path: Path) -> None:
    assert find_config(env={}, cwd=tmp_path) is None
    nested = write(tmp_path, "", "config/castor.toml")
    assert find_config(env={}, cwd=tmp_path) == nested
    top = write(tmp_path, "")
    assert find_config(env={}, cwd=tmp_path) == top
    named = tmp_path / "elsewhere.toml"  # named on purpose: taken even if missing, so loading it says so
    assert find_config(env={"CASTOR_CONFIG": str(named)}, cwd=tmp_path) == named


@pytest.mark.parametrize("broker", ["", 'url = "redis://127.0.0.1:6379/0"'], ids=["unset", "the same URL"])
def test_redis_given_to_a_worker_moves_a_broker_that_was_the_configs_redis(tmp_path: Path, broker: str) -> None:
    """``castor flower --redis URL`` in a directory with a config whose broker was its Redis (unset, or the
    same URL written out, as the shipped config once did) ran on the config's Redis: the flag moved the
    store and left the broker, so a newcomer's commands wrote to another database than the one named."""
    import argparse

    from castor.cli._stores import fleet_process_settings

    config = write(tmp_path, f'[redis]\nurl = "redis://127.0.0.1:6379/0"\n[broker]\n{broker}\n')
    args = argparse.Namespace(command="flower", config=str(config), redis="redis://127.0.0.1:6399/11")
    settings = fleet_process_settings(args)
    assert settings.redis.url == "redis://127.0.0.1:6399/11"
    assert settings.broker_url == "redis://127.0.0.1:6399/11"


def test_redis_given_to_a_worker_leaves_a_broker_of_its_own(tmp_path: Path) -> None:
    import argparse

    from castor.cli._stores import fleet_process_settings

    for broker in ("amqp://guest:guest@127.0.0.1:5672//", "redis://127.0.0.1:6380/0"):
        config = write(tmp_path, f'[redis]\nurl = "redis://127.0.0.1:6379/0"\n[broker]\nurl = "{broker}"\n')
        args = argparse.Namespace(command="worker", config=str(config), redis="redis://127.0.0.1:6399/11")
        assert fleet_process_settings(args).broker_url == broker


# --- deadlines and the broker's visibility timeout ---------------------------------------------------


def test_the_visibility_timeout_exceeds_a_deadline_declared_only_in_code() -> None:
    settings = Settings()  # default_timeout 300, 3 retries: far below an hour
    registry = ToolRegistry([long_export])
    options = celery_config(settings, tools=registry)["broker_transport_options"]
    assert options["visibility_timeout"] == HOUR + REPLY_GRACE
    assert celery_config(settings)["broker_transport_options"]["visibility_timeout"] < HOUR  # knows no such tool
    # retried: every attempt's deadline and the backoff before each, as long as the coordinator waits
    retried = celery_config(settings, tools=ToolRegistry([long_retried]))["broker_transport_options"]
    deadline = call_deadline(settings, HOUR, True)  # what the coordinator waits (CeleryExecutor._deadline)
    assert deadline == 4 * HOUR + (1 + 2 + 4) + REPLY_GRACE
    assert retried["visibility_timeout"] == deadline


def test_a_configured_visibility_timeout_below_the_longest_deadline_is_raised_with_a_warning() -> None:
    registry = ToolRegistry([long_export])
    low = Settings(broker={"visibility_timeout": 600}, source="fleet.toml")
    high = Settings(broker={"visibility_timeout": 5 * HOUR})
    assert broker_visibility(low, registry) == HOUR + REPLY_GRACE
    warning = visibility_warning(low, registry)
    assert warning is not None and "visibility_timeout = 600 in fleet.toml" in warning and "raised to 3630s" in warning
    assert "raised to 1237s" in (visibility_warning(low) or "")  # the config's deadlines: 300 s, 3 retries
    assert broker_visibility(high, registry) == 5 * HOUR and visibility_warning(high, registry) is None
    rabbit = Settings(broker={"url": "amqp://h//", "visibility_timeout": 1})
    assert visibility_warning(rabbit) is None  # no such thing there


def test_rabbitmqs_consumer_timeout_warning_counts_the_deadlines_declared_in_code() -> None:
    settings = Settings(broker={"url": "amqp://h//"})
    assert consumer_timeout_warning(settings) is None  # the config's deadlines: 1237 s, under 30 minutes
    warning = consumer_timeout_warning(settings, tools=ToolRegistry([long_export]))
    assert warning is not None and "consumer_timeout = 3630000 in rabbitmq.conf" in warning


def test_a_tool_file_beside_the_config_is_found_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A desktop MCP client starts ``castor mcp --config /abs/castor.toml`` in a directory of its own: a
    ``[tools] import`` of ``tools.py:add`` said "file tools.py not found". A relative file that is not found
    from the current directory but is beside the config is taken from there; one found here stays."""
    home = tmp_path / "home"
    write(home, "def add(a: int, b: int) -> int:\n    return a + b\n", "tools.py")
    config = write(home, '[tools]\nimport = ["tools.py:add", "here.py:f", "mod.sub:g"]\n')
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere, "def f() -> None:\n    pass\n", "here.py")
    monkeypatch.chdir(elsewhere)
    imports = load_settings(config, env={}).tools.imports
    assert list(imports) == [f"{(home / 'tools.py').resolve()}:add", "here.py:f", "mod.sub:g"]


# --- a signed task never outlives its run's records ----------------------------------------------------


def test_a_task_max_age_longer_than_the_stores_retention_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Past the store's retention a finished run's records are gone: a signed task still young enough to run
    would find nothing to answer it, and run its tool again. So ``[security] task_max_age`` may not exceed
    ``retention_seconds``: said at start-up, naming both, from the file, the environment or ``--redis``."""
    from castor.backends.redis.runs import WEEK
    from castor.settings._model import DEFAULT_RETENTION

    assert DEFAULT_RETENTION == WEEK  # what a URL naming no retention gets
    day = "redis://127.0.0.1:6379/0?prefix=t&retention_seconds=86400"
    config = write(tmp_path, f'[redis]\nurl = "{day}"\n[security]\ntask_max_age = 172800\n')
    with pytest.raises(ConfigError) as raised:
        load_settings(config, env={})
    message = str(raised.value)
    assert "task_max_age = 172800 seconds" in message and "retention_seconds = 86400" in message, message
    assert str(config) in message
    with pytest.raises(ConfigError, match="retention_seconds = 604800"):  # the default retention, a week
        load_settings(write(tmp_path, "[security]\ntask_max_age = 691200\n", "eight-days.toml"), env={})
    with pytest.raises(ConfigError, match="retention_seconds = 86400"):  # a week's tasks, a day's store
        load_settings(None, env={"CASTOR_REDIS_URL": day})
    assert main(["worker", "--config", str(config), "--pool", "default"]) == 1  # refused at start-up
    assert "task_max_age = 172800 seconds" in capsys.readouterr().err
    week = write(tmp_path, "[security]\ntask_max_age = 604800\n", "week.toml")  # a coordinator's store given by --redis
    assert main(["coordinator", "--config", str(week), "--redis", day]) == 1
    err = capsys.readouterr().err
    assert "task_max_age = 604800 seconds" in err and "retention_seconds = 86400" in err, err
    ok = write(tmp_path, f'[redis]\nurl = "{day}"\n[security]\ntask_max_age = 86400\n', "day.toml")
    assert load_settings(ok, env={}).security.task_max_age == 86400  # equal is enough
