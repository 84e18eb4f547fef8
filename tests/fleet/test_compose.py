"""The deployment files, checked without a Docker engine: every compose service's command is a real
``castor`` command with valid flags (parsed by the CLI's own parser), every file they name exists, the
Dockerfile copies what exists, the README's "Running a fleet" commands give the same topology, and the
RabbitMQ service (on request) lets tools run as long as the config allows."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from castor.cli import build_parser
from castor.errors import ConfigError
from castor.settings import broker_visibility, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, Any] = COMPOSE["services"]
CASTOR_SERVICES = [name for name, svc in SERVICES.items() if "build" in svc]


INTERPOLATED = re.compile(r"\$\{(\w+)(?::([-?])([^}$]*))?\}")  # innermost first: defaults may hold one


def compose_value(text: str, env: dict[str, str]) -> str:
    """``text`` with compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` filled from ``env``."""
    def fill(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if env.get(name):
            return env[name]
        if kind == "?":
            raise KeyError(f"compose refuses to start: {rest}")
        return rest if kind == "-" else ""

    while True:
        filled = INTERPOLATED.sub(fill, text)
        if filled == text:
            return filled
        text = filled


def parse(argv: list[str]) -> Any:
    """The CLI's own parse of ``castor ARGV``; a usage error fails the test."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"castor {' '.join(argv)}: not a valid command line (exit {exc.code})")


def readme_fleet_commands() -> list[list[str]]:
    """The ``castor`` command lines of the README's fleet section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Running a fleet", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        commands += [shlex.split(line) for line in block.splitlines() if line.startswith("castor ")]
    return commands


def role(argv: list[str]) -> tuple[str, str | None]:
    """A long-running process's role: ``(command, pool or name)``."""
    args = parse(argv)
    return args.command, getattr(args, "pool", None) or getattr(args, "name", None)


@pytest.mark.parametrize("service", CASTOR_SERVICES)
def test_every_service_runs_a_real_castor_command(service: str) -> None:
    svc = SERVICES[service]
    argv = svc["command"]
    args = parse(argv)
    assert args.command == argv[0] and callable(args.handler)
    config = getattr(args, "config", None)
    assert config and (ROOT / config).is_file(), f"{service}: config {config!r} does not exist"
    settings = load_settings(ROOT / config, env={})  # parses: unknown keys would be errors
    if args.command == "worker":
        assert args.pool in settings.pool_names
        for spec in settings.tools.imports:  # the tools the pool imports are in the image
            assert (ROOT / spec.rpartition(":")[0]).is_file(), spec
    assert "healthcheck" in svc, f"{service} has no health check"
    health = svc["healthcheck"]["test"]
    if health[:2] == ["CMD", "castor"]:
        parse(health[2:])


def test_the_topology() -> None:
    roles = {role(SERVICES[name]["command"]) for name in CASTOR_SERVICES}
    assert {r for r in roles if r[0] == "coordinator"} == {("coordinator", "coordinator-1"),
                                                          ("coordinator", "coordinator-2")}
    assert {r for r in roles if r[0] == "worker"} == {("worker", "fs"), ("worker", "web"), ("worker", "llm")}
    flower = parse(SERVICES["flower"]["command"])
    assert flower.command == "flower" and flower.port == 5555
    assert any(str(p).endswith(":5555:5555") or str(p) == "5555:5555" for p in SERVICES["flower"]["ports"])
    redis = SERVICES["redis"]
    mounted = {v.split(":")[0]: v.split(":")[1] for v in redis["volumes"] if v.startswith("./")}
    conf = ROOT / "config/redis.conf"
    assert mounted["./config/redis.conf"] in redis["command"]
    assert re.search(r"^appendonly yes", conf.read_text(), re.M)
    assert "healthcheck" in redis
    for name in CASTOR_SERVICES:
        assert SERVICES[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_rabbitmq_is_the_broker_on_request_and_gives_tools_the_time_they_need() -> None:
    rabbit = SERVICES["rabbitmq"]
    assert rabbit["profiles"] == ["rabbitmq"]  # a plain `docker compose up` keeps Redis as the broker
    assert "healthcheck" in rabbit
    for name in CASTOR_SERVICES:
        assert SERVICES[name]["depends_on"]["rabbitmq"] == {"condition": "service_healthy", "required": False}
    mounted = {v.split(":")[0]: v.split(":")[1] for v in rabbit["volumes"] if v.startswith("./")}
    assert mounted["./config/rabbitmq.conf"].startswith("/etc/rabbitmq/conf.d/")
    conf = (ROOT / "config/rabbitmq.conf").read_text()
    consumer_timeout = re.search(r"^consumer_timeout = (\d+)$", conf, re.M)
    assert consumer_timeout is not None
    # The URL the header gives names the service's user and vhost, and the fleet's settings accept it;
    # RabbitMQ lets a worker hold a task longer than the config's longest tool may run.
    url = re.search(r"CASTOR_BROKER_URL=(amqp://\S+)", COMPOSE_TEXT)
    assert url is not None
    env = rabbit["environment"]
    assert url.group(1).startswith(f"amqp://{env['RABBITMQ_DEFAULT_USER']}:")
    assert url.group(1).endswith(f"@rabbitmq:5672/{env['RABBITMQ_DEFAULT_VHOST']}")
    settings = load_settings(ROOT / "config/castor.toml", env={"CASTOR_BROKER_URL": url.group(1)})
    assert settings.broker_transport == "amqp"
    assert int(consumer_timeout.group(1)) > broker_visibility(settings) * 1000


def test_the_dockerfile_copies_what_exists() -> None:
    dockerfile = COMPOSE["x-castor"]["build"]["dockerfile"]
    text = (ROOT / dockerfile).read_text()
    copies = re.findall(r"^COPY\s+(.+?)\s+\S+\s*$", text, re.M)
    assert copies
    for sources in copies:
        for source in sources.split():
            assert (ROOT / source).exists(), f"COPY source {source} does not exist"
    copied = {s for sources in copies for s in sources.split()}
    assert {"castor", "config", "examples"} <= copied
    # The fleet's roles install from their own folders (castor.fleet.workers from workers/, ...): the
    # image's ``pip install .`` needs every folder the build maps.
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert {folder for name, folder in package_dir.items() if name} == {"workers", "scheduler"}
    assert set(package_dir.values()) - {"."} <= copied
    assert re.search(r'^ENTRYPOINT \["castor"\]', text, re.M)


def test_the_readme_gives_the_same_topology_on_localhost() -> None:
    commands = readme_fleet_commands()
    long_running = [argv[1:] for argv in commands if argv[1] in ("worker", "coordinator", "flower", "console")]
    assert {role(argv) for argv in long_running} == {role(SERVICES[n]["command"]) for n in CASTOR_SERVICES}
    for argv in commands:
        parse([a if a != "<pid>" else "some-pid" for a in argv[1:]])


def test_only_the_llm_worker_holds_the_model_providers_key() -> None:
    settings = load_settings(ROOT / "config/castor.toml", env={})
    key = settings.llm.api_key_env
    assert settings.llm.provider and key
    holders = [n for n in CASTOR_SERVICES if key in (SERVICES[n].get("environment") or {})]
    assert holders == ["worker-llm"] and role(SERVICES["worker-llm"]["command"]) == ("worker", settings.llm.pool)
    llm_env, fs_env = SERVICES["worker-llm"]["environment"], SERVICES["worker-fs"]["environment"]
    assert {k: v for k, v in llm_env.items() if k != key} == fs_env  # the fleet's own environment besides


def test_every_worker_keeps_its_spool_on_a_named_volume() -> None:
    """A result a worker finished while Redis was away waits in its spool ([workers] spool, under the
    image user's home): on a container's own disk it would die with the container."""
    from castor.settings import Settings

    home = re.search(r"useradd --create-home --uid \d+ (\w+)", (ROOT / "docker/Dockerfile").read_text())
    assert home is not None
    spool = Settings().workers.spool.replace("~", f"/home/{home.group(1)}", 1)
    for name in CASTOR_SERVICES:
        if role(SERVICES[name]["command"])[0] != "worker":
            continue
        mounts = {v.split(":")[1]: v.split(":")[0] for v in SERVICES[name].get("volumes", [])}
        assert spool in mounts, f"{name} keeps no volume at {spool}"
        assert mounts[spool] in COMPOSE["volumes"], f"{name}: {mounts[spool]} is not a named volume"


def test_each_worker_health_check_pings_its_own_pool_under_castors_settings() -> None:
    """``celery inspect ping`` never passed: it knows neither the fleet's broker key prefix nor the pool.
    ``castor worker --ping`` (tests/celery/test_ping.py runs it against live workers) does."""
    for name in CASTOR_SERVICES:
        command = parse(SERVICES[name]["command"])
        if command.command != "worker":
            continue
        health = SERVICES[name]["healthcheck"]["test"]
        assert health[:2] == ["CMD", "castor"], f"{name}: {health}"
        args = parse(health[2:])
        assert args.command == "worker" and args.ping and args.pool == command.pool
        assert args.config == command.config and not args.any_host
        assert args.timeout < _seconds(SERVICES[name]["healthcheck"]["timeout"])


def _seconds(text: str) -> float:
    return float(str(text).rstrip("s"))


def test_redis_is_not_published_on_a_host_port() -> None:
    """A host port clashes with a Redis on the host and exposes the fleet's state (runs, approvals)."""
    assert "ports" not in SERVICES["redis"]


def test_flower_beyond_loopback_has_auth_or_says_it_has_none() -> None:
    args = parse(SERVICES["flower"]["command"])
    from castor.fleet.workers.flower import is_loopback

    assert args.address == "0.0.0.0" and not is_loopback(args.address)
    # the container listens on all its interfaces; the host publishes it on loopback only, and
    # castor flower warns at start (without --allow-unauthenticated it would refuse)
    assert args.allow_unauthenticated
    assert all(str(p).startswith("127.0.0.1:") for p in SERVICES["flower"]["ports"])


def redis_users(command: list[str]) -> dict[str, list[str]]:
    """The ``--user NAME RULES...`` directives of a ``redis-server`` command line, by user."""
    users: dict[str, list[str]] = {}
    current: list[str] | None = None
    for arg in command:
        if arg.startswith("--"):
            current = [] if arg == "--user" else None
        elif current is not None and not current:
            current.append(arg)
            users[arg] = current
        elif current is not None:
            current.append(arg)
    return {name: rules[1:] for name, rules in users.items()}


def test_redis_has_the_users_castor_redis_acl_prints_and_flower_the_confined_one() -> None:
    """With the broker on the fleet's Redis, whoever held Flower's URL held the approvals and the journal.
    Redis now has no default user, ``castor`` for Castor's processes and ``flower`` confined to the broker's
    keys, rule for rule what ``castor redis-acl`` prints for the shipped config."""
    from castor.fleet import acl

    settings = load_settings(ROOT / "config/castor.toml", env={})
    env = {"CASTOR_REDIS_PASSWORD": "p" * 20, "CASTOR_FLOWER_REDIS_PASSWORD": "q" * 20}
    users = {name: [compose_value(rule, env) for rule in rules]
             for name, rules in redis_users(SERVICES["redis"]["command"]).items()}
    printed = {line.split()[1]: line.split()[2:] for line in acl.acl_file(settings, *env.values()).splitlines()}
    assert set(users) == set(printed) == {"default", "castor", "flower"}
    assert users["default"] == printed["default"] == ["off", "resetchannels", "-@all"]
    for name, password in (("castor", env["CASTOR_REDIS_PASSWORD"]), ("flower", env["CASTOR_FLOWER_REDIS_PASSWORD"])):
        # the same rules; compose gives the password itself, the file its hash
        assert users[name] == [f">{password}" if rule.startswith("#") else rule for rule in printed[name]], name
    for name in ("CASTOR_REDIS_PASSWORD", "CASTOR_FLOWER_REDIS_PASSWORD"):
        with pytest.raises(KeyError, match=name):  # no default: compose refuses to start without it
            [compose_value(rule, {k: v for k, v in env.items() if k != name}) for rule in SERVICES["redis"]["command"]]
    health = SERVICES["redis"]["healthcheck"]["test"]
    assert health[0] == "CMD-SHELL" and "--user castor" in health[1]
    assert SERVICES["redis"]["environment"]["REDISCLI_AUTH"] == "${CASTOR_REDIS_PASSWORD}"


def test_every_process_but_flower_is_user_castor_and_flower_holds_no_secret() -> None:
    env = {"CASTOR_REDIS_PASSWORD": "p" * 20, "CASTOR_FLOWER_REDIS_PASSWORD": "q" * 20, "CASTOR_SECRET": "s" * 64,
           "CASTOR_CONSOLE_TOKEN": "t" * 32}
    for name in CASTOR_SERVICES:
        given = {k: compose_value(str(v), env) for k, v in SERVICES[name]["environment"].items()}
        user, password = ("flower", "q" * 20) if name == "flower" else ("castor", "p" * 20)
        for var in ("CASTOR_REDIS_URL", "CASTOR_BROKER_URL"):
            if var in given:
                assert given[var] == f"redis://{user}:{password}@redis:6379/0", (name, var)
        assert ("CASTOR_SECRET" in given) == (name not in ("flower", "console")), name
    # on RabbitMQ (the header's CASTOR_BROKER_URL=amqp://...) Flower takes that broker, and its Redis user stays flower
    amqp = {**env, "CASTOR_BROKER_URL": "amqp://castor:x@rabbitmq:5672/castor"}
    flower = {k: compose_value(str(v), amqp) for k, v in SERVICES["flower"]["environment"].items()}
    assert flower["CASTOR_BROKER_URL"].startswith("amqp://") and flower["CASTOR_REDIS_URL"].startswith("redis://flower:")


def test_the_readme_writes_every_secret_compose_demands() -> None:
    demanded = set(re.findall(r"\$\{(\w+):\?", COMPOSE_TEXT))
    secrets = {"CASTOR_SECRET", "CASTOR_CONSOLE_TOKEN", "CASTOR_REDIS_PASSWORD", "CASTOR_FLOWER_REDIS_PASSWORD"}
    assert secrets <= demanded
    section = (ROOT / "README.md").read_text().split("## Running a fleet", 1)[1]
    line = re.search(r"^(python3? -c .*) > \.env$", section, re.M)
    assert line is not None, "the README's fleet section writes no .env"
    written = subprocess.run(shlex.split(line.group(1)), capture_output=True, text=True, check=True).stdout
    values = dict(entry.split("=", 1) for entry in written.split())
    assert set(values) == demanded and all(len(v) >= 32 for v in values.values())
    assert line.group(1) in COMPOSE_TEXT  # the compose file's header gives the same command



def test_the_compose_coordinators_import_only_listed_code_and_the_headers_run_is_listed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from castor.fleet.scheduler._allowed import AllowedCode

    from castor.checkpoint import RunSpec

    monkeypatch.chdir(ROOT)  # the image's working directory holds config/ and examples/ as the repository does
    for name in ("coordinator-1", "coordinator-2"):
        env = {k: compose_value(str(v), {}) for k, v in SERVICES[name]["environment"].items() if k == "CASTOR_AGENTS"}
        assert env, f"{name} names no CASTOR_AGENTS: it would import whatever a run names"
        allowed = AllowedCode.of(load_settings(ROOT / parse(SERVICES[name]["command"]).config, env=env))
        assert allowed is not None
        submit = re.search(r"coordinator-1 submit (\S+) \\\n#\s+(.*) \\\n#\s+(.*) --budget", COMPOSE_TEXT)
        assert submit is not None, "the header's submit example moved"
        tools = re.findall(r"--tool (\S+)", submit.group(2) + " " + submit.group(3))
        allowed.check(RunSpec(agent=str(ROOT / submit.group(1)), tools=[str(ROOT / spec) for spec in tools]))
        with pytest.raises(ConfigError, match="is not among"):
            allowed.check(RunSpec(agent="os:system"))
