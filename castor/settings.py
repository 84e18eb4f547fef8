"""Fleet settings: one ``castor.toml`` parsed once at an entrypoint and passed down, never global.

    [redis]     url, prefix                      where runs, journals, budgets and approvals live
    [broker]    url, queue_prefix, visibility_timeout   Redis (the default) or RabbitMQ (amqp://)
    [security]  secret, max_argument_bytes, insecure_dev   HMAC secret tasks are signed with; argument size
                                                limit; a development fleet without a proper secret
    [tools]     import, destructive, idempotent, retryable, timeouts, default_timeout, max_retries, retry_backoff
    [pools]     <pool> = [tool, ...]            every other tool runs on ``[workers] default_pool``
    [workers]   default_pool, concurrency, pool, heartbeat, outage_deadline, spool
    [budgets]   <resource> = limit
    [flower]    port, basic_auth
    [coordinator] max_takeovers                 a run taken over more times in a row is quarantined (FAILED)

Unknown sections or keys, an unknown pool, a tool in two pools and a broker URL of a scheme no fleet
runs on are ``ConfigError``s at start-up; a number out of its range (``castor._limits.SETTINGS``) or of
the wrong type is an ``InvalidValueError`` naming the key, the file and the range. A process that signs
or verifies tasks calls ``require_secret`` (``castor._secret``) before it starts.
``CASTOR_REDIS_URL``, ``CASTOR_BROKER_URL``, ``CASTOR_SECRET`` and ``CASTOR_INSECURE_DEV`` override the
file. A command given no ``--config`` finds one with ``find_config``: ``CASTOR_CONFIG``, else
``./castor.toml``, else ``./config/castor.toml``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from castor._errors import ConfigError, InvalidValueError
from castor._limits import SETTINGS, TOOL_TIMEOUT, check_setting
from castor._secret import INSECURE_ENV
from castor.registry import ToolSpec

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# The brokers a fleet runs on, by URL scheme: kombu's Redis transport, and RabbitMQ through py-amqp.
BROKER_SCHEMES = {
    "redis": "redis", "rediss": "redis", "redis+socket": "redis", "sentinel": "redis",
    "amqp": "amqp", "amqps": "amqp", "pyamqp": "amqp",
}
DEFAULT_POOL = "default"
# Coordinator-side grace on top of a tool's own deadline: queueing, delivery and the journal write.
REPLY_GRACE = 30.0
CONFIG_ENV = "CASTOR_CONFIG"
CONFIG_FILES = ("castor.toml", "config/castor.toml")  # looked for in the working directory, in this order
CONFIG_HELP = (
    f"castor.toml: pools, tools, broker, secret (default: ${CONFIG_ENV}, else ./{CONFIG_FILES[0]}, "
    f"else ./{CONFIG_FILES[1]}, the first that is set or exists; none: the built-in defaults)"
)

_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "redis": {"url": str, "prefix": str},
    "broker": {"url": str, "queue_prefix": str, "visibility_timeout": (int, float)},
    "security": {"secret": str, "max_argument_bytes": int, "insecure_dev": bool},
    "tools": {
        "import": list, "destructive": list, "idempotent": list, "retryable": list, "timeouts": dict,
        "default_timeout": (int, float), "max_retries": int, "retry_backoff": (int, float),
    },
    "workers": {
        "default_pool": str, "concurrency": int, "pool": str, "heartbeat": (int, float),
        "outage_deadline": (int, float), "spool": str,
    },
    "flower": {"port": int, "basic_auth": str},
    "coordinator": {"max_takeovers": int},
}
_FREE_SECTIONS = ("pools", "budgets")  # their keys are the operator's names


@dataclass(frozen=True)
class Settings:
    """Everything a coordinator, a worker or Flower needs to join the fleet."""

    redis_url: str = DEFAULT_REDIS_URL
    redis_prefix: str = "castor"
    broker_url: str | None = None
    queue_prefix: str = "castor"
    visibility_timeout: float | None = None
    secret: str | None = None
    max_argument_bytes: int = 64 * 1024
    insecure_dev: bool = False
    tool_imports: tuple[str, ...] = ()
    destructive: frozenset[str] = frozenset()
    idempotent: frozenset[str] = frozenset()
    retryable: frozenset[str] = frozenset()
    timeouts: Mapping[str, float] = field(default_factory=dict)
    default_timeout: float = 300.0
    max_retries: int = 3
    retry_backoff: float = 1.0
    pools: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default_pool: str = DEFAULT_POOL
    concurrency: int = 4
    worker_pool: str = "threads"
    heartbeat: float = 10.0  # TTL (s) of a running step's heartbeat: a dead worker's step is in doubt after it
    outage_deadline: float = 300.0  # how long (s) a worker keeps asking a lost Redis to take a finished step
    spool: str = "~/.castor/spool"  # where a finished step waits for Redis past the outage deadline
    budgets: Mapping[str, float] = field(default_factory=dict)
    flower_port: int = 5555
    flower_basic_auth: str | None = None
    max_takeovers: int = 3
    source: str = "<defaults>"

    def __post_init__(self) -> None:
        owner: dict[str, str] = {}
        for pool, tools in self.pools.items():
            for tool in tools:
                if tool in owner:
                    raise ConfigError(
                        f"{self.source}: tool {tool!r} is in two pools, {owner[tool]!r} and {pool!r}; "
                        "a tool runs on exactly one pool"
                    )
                owner[tool] = pool
        for field_name, (key, limit) in SETTINGS.items():
            value = getattr(self, field_name)
            if value is not None:  # None: not set (visibility_timeout)
                check_setting(key, value, limit, self.source)
        for name, seconds in self.timeouts.items():
            check_setting(f"[tools] timeouts.{name}", seconds, TOOL_TIMEOUT, self.source)
        if self.broker_url is not None:  # the Redis URL as a broker is Redis, whatever its form
            _check_broker_url(self.broker_url, self.source)

    # --- routing ----------------------------------------------------------------------------------

    @property
    def pool_names(self) -> list[str]:
        """Every pool: the configured ones and the default pool."""
        return sorted({*self.pools, self.default_pool})

    def pool_of(self, tool: str) -> str:
        """The pool that runs ``tool``."""
        for pool, tools in self.pools.items():
            if tool in tools:
                return pool
        return self.default_pool

    def queue_of(self, pool: str) -> str:
        """The broker queue a pool consumes: ``<queue_prefix>.<pool>``."""
        return f"{self.queue_prefix}.{pool}"

    def check_pool(self, pool: str) -> str:
        """``pool`` if it is configured; a ``ConfigError`` naming the known pools otherwise."""
        if pool not in self.pool_names:
            raise ConfigError(f"unknown pool {pool!r} in {self.source}; pools: {', '.join(self.pool_names)}")
        return pool

    # --- deadlines --------------------------------------------------------------------------------

    def timeout_of(self, tool: str, declared: float | None = None) -> float:
        """The tool's deadline: the config's, else what the tool declares, else the default."""
        configured = self.timeouts.get(tool)
        if configured is not None:
            return float(configured)
        return float(declared) if declared is not None else self.default_timeout

    @property
    def broker_visibility_timeout(self) -> float:
        """``broker_visibility(self)``: for a process that knows no tools but the config's."""
        return broker_visibility(self)

    @property
    def broker(self) -> str:
        """The broker URL (the Redis URL unless one is set)."""
        return self.broker_url or self.redis_url

    @property
    def broker_transport(self) -> str:
        """``"redis"`` or ``"amqp"`` (RabbitMQ): what the broker URL's scheme names."""
        return BROKER_SCHEMES.get(urlsplit(self.broker).scheme, "redis")


def _check_broker_url(url: str, source: str) -> None:
    """A broker URL a fleet can use, or a ``ConfigError`` that says why not, before anything connects (the
    message never shows the URL: it may hold a password)."""
    where = f"{source}: the broker URL ([broker] url or CASTOR_BROKER_URL)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises on a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"{where} is malformed: {exc}") from exc
    if parts.scheme not in BROKER_SCHEMES:
        raise ConfigError(
            f"{where} starts with {parts.scheme + '://' if parts.scheme else 'no scheme'}, which names no broker "
            "Castor runs on: use redis:// (rediss://, redis+socket://, sentinel://) or amqp:// (amqps://) for RabbitMQ"
        )


def call_deadline(settings: Settings, timeout: float, retryable: bool, grace: float = REPLY_GRACE) -> float:
    """How long one call may take from its publish to its reply: the tool's ``timeout``, and if it is
    ``retryable`` every retry's with the backoff before each (the worker waits ``retry_backoff * 2**n``
    before retry ``n + 1``), plus ``grace``. The coordinator waits this long; the broker must not hand
    the task to another worker sooner."""
    if not retryable:
        return timeout + grace
    backoff = sum(settings.retry_backoff * 2**n for n in range(settings.max_retries))
    return timeout * (settings.max_retries + 1) + backoff + grace


def longest_deadline(settings: Settings, tools: Iterable[ToolSpec] = ()) -> float:
    """The longest ``call_deadline`` (no grace) of any of ``tools`` and of any deadline the config gives.

    The config's deadlines count as retryable: a process that does not know a tool (Flower, a worker of
    another pool) must still not take it for lost while its retries run.
    """
    configured = max([settings.default_timeout, *settings.timeouts.values()])
    longest = call_deadline(settings, configured, retryable=True, grace=0.0)
    for spec in tools:
        policy = tool_policy(settings, spec)
        longest = max(longest, call_deadline(settings, policy.timeout, policy.retryable, grace=0.0))
    return longest


def broker_visibility(settings: Settings, tools: Iterable[ToolSpec] = ()) -> float:
    """How long a Redis broker keeps a delivered, unacked task from every other worker: above the longest
    deadline of ``tools`` and of the config (with ``REPLY_GRACE``), or it would hand a task that still
    runs to a second worker. A lower ``[broker] visibility_timeout`` is raised (``visibility_warning``).
    (RabbitMQ's ``consumer_timeout`` must be above it too.)

    kombu's Redis transport lets every consumer of the broker restore any task unacked for longer than
    its own visibility timeout, whatever its queue. Workers that take their tools from the config count
    every tool it imports (``workers.main.deadline_tools``); Flower and a worker given ``--tools`` know
    only the config's deadlines, so a tool declaring a long one in code belongs in ``[tools] timeouts``
    too (or the fleet sets ``[broker] visibility_timeout``).
    """
    return max(settings.visibility_timeout or 0.0, longest_deadline(settings, tools) + REPLY_GRACE)


def visibility_warning(settings: Settings, tools: Iterable[ToolSpec] = ()) -> str | None:
    """A warning when ``[broker] visibility_timeout`` is below what ``broker_visibility`` needs (it is
    raised to that); None otherwise, and on RabbitMQ (where the setting does nothing)."""
    configured = settings.visibility_timeout
    needed = broker_visibility(settings, tools)
    if settings.broker_transport != "redis" or configured is None or configured >= needed:
        return None
    return (
        f"[broker] visibility_timeout = {configured:g} in {settings.source} is below the longest deadline of "
        f"the tools here (with retries and a grace): raised to {needed:g}s, or the broker would give a task "
        "that still runs to another worker"
    )


def find_config(env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file of a command given no ``--config``: ``$CASTOR_CONFIG`` (which must exist then),
    else the first of ``CONFIG_FILES`` in ``cwd`` that exists, else None (the built-in defaults)."""
    env = os.environ if env is None else env
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])  # named on purpose: load_settings says so if it is missing
    base = Path.cwd() if cwd is None else Path(cwd)
    for name in CONFIG_FILES:
        if (base / name).is_file():
            return base / name
    return None


def load_settings(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Parse ``castor.toml`` (or take the defaults) and apply the environment's overrides. ``path`` None
    means no file (the CLI looks for one first: ``find_config``)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if path is not None:
        values = _parse(Path(path))
    overrides = {"redis_url": "CASTOR_REDIS_URL", "broker_url": "CASTOR_BROKER_URL", "secret": "CASTOR_SECRET"}
    for name, var in overrides.items():
        if env.get(var):
            values[name] = env[var]
    if env.get(INSECURE_ENV):
        values["insecure_dev"] = _flag(env[INSECURE_ENV], INSECURE_ENV)
    return Settings(**values)


def _flag(text: str, name: str) -> bool:
    """An environment switch: 1/true/yes/on or 0/false/no/off, any case."""
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off", ""):
        return False
    raise InvalidValueError(f"{name}={text!r} is neither 1 (true, yes, on) nor 0 (false, no, off)")


def _parse(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    where = str(path)
    _check_keys(raw, where)
    section = {name: raw.get(name, {}) for name in (*_SCHEMA, *_FREE_SECTIONS)}
    tools, workers, broker = section["tools"], section["workers"], section["broker"]
    values: dict[str, Any] = {
        "redis_url": section["redis"].get("url", DEFAULT_REDIS_URL),
        "redis_prefix": section["redis"].get("prefix", "castor"),
        "broker_url": broker.get("url"),
        "queue_prefix": broker.get("queue_prefix", "castor"),
        "visibility_timeout": broker.get("visibility_timeout"),
        "secret": section["security"].get("secret"),
        "max_argument_bytes": section["security"].get("max_argument_bytes", 64 * 1024),
        "insecure_dev": section["security"].get("insecure_dev", False),
        "tool_imports": tuple(_strings(tools.get("import", []), where, "tools.import")),
        "destructive": frozenset(_strings(tools.get("destructive", []), where, "tools.destructive")),
        "idempotent": frozenset(_strings(tools.get("idempotent", []), where, "tools.idempotent")),
        "retryable": frozenset(_strings(tools.get("retryable", []), where, "tools.retryable")),
        "timeouts": dict(tools.get("timeouts", {})),
        "default_timeout": float(tools.get("default_timeout", 300.0)),
        "max_retries": tools.get("max_retries", 3),
        "retry_backoff": float(tools.get("retry_backoff", 1.0)),
        "pools": {pool: tuple(_strings(names, where, f"pools.{pool}")) for pool, names in section["pools"].items()},
        "default_pool": workers.get("default_pool", DEFAULT_POOL),
        "concurrency": workers.get("concurrency", 4),
        "worker_pool": workers.get("pool", "threads"),
        "heartbeat": float(workers.get("heartbeat", 10.0)),
        "outage_deadline": float(workers.get("outage_deadline", 300.0)),
        "spool": workers.get("spool", "~/.castor/spool"),
        "budgets": _budgets(section["budgets"], where),
        "flower_port": section["flower"].get("port", 5555),
        "flower_basic_auth": section["flower"].get("basic_auth"),
        "max_takeovers": section["coordinator"].get("max_takeovers", 3),
        "source": where,
    }
    if values["worker_pool"] not in ("threads", "prefork", "solo"):
        raise ConfigError(f"{where}: [workers] pool must be threads, prefork or solo, not {values['worker_pool']!r}")
    _check_tool_names(values, where)
    return values


def _check_keys(raw: dict[str, Any], where: str) -> None:
    for name, body in raw.items():
        if name not in _SCHEMA and name not in _FREE_SECTIONS:
            known = ", ".join(sorted([*_SCHEMA, *_FREE_SECTIONS]))
            raise ConfigError(f"{where}: unknown section [{name}]; known sections: {known}")
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: [{name}] must be a table")
        schema = _SCHEMA.get(name)
        if schema is None:
            continue
        for key, value in body.items():
            if key not in schema:
                raise ConfigError(f"{where}: unknown key {key!r} in [{name}]; known keys: {', '.join(schema)}")
            if not isinstance(value, schema[key]) or (isinstance(value, bool) and schema[key] is not bool):
                raise InvalidValueError(f"{where}: [{name}] {key} has the wrong type ({type(value).__name__})")


def _strings(value: Any, where: str, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {what} must be a list of strings, got {value!r}")
    return value


def _budgets(table: dict[str, Any], where: str) -> dict[str, float]:
    for key, value in table.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{where}: budget {key!r} must be a non-negative number, got {value!r}")
    return {k: float(v) for k, v in table.items()}


def _check_tool_names(values: dict[str, Any], where: str) -> None:
    """With ``[tools] import`` given, every tool named elsewhere must be one of the imported tools."""
    imported = {spec.rsplit(":", 1)[-1] for spec in values["tool_imports"]}
    if not imported:
        return
    named = {
        "tools.destructive": values["destructive"], "tools.idempotent": values["idempotent"],
        "tools.retryable": values["retryable"], "tools.timeouts": set(values["timeouts"]),
        **{f"pools.{pool}": set(tools) for pool, tools in values["pools"].items()},
    }
    for what, names in named.items():
        unknown = sorted(set(names) - imported)
        if unknown:
            raise ConfigError(f"{where}: {what} names tools that [tools] import does not: {', '.join(unknown)}")


def tool_policy(settings: Settings, spec: ToolSpec) -> ToolPolicy:
    """What the fleet does with ``spec``: the tool's declarations with the config's lists on top."""
    return ToolPolicy(
        timeout=settings.timeout_of(spec.name, spec.timeout),
        idempotent=spec.idempotent or spec.name in settings.idempotent,
        retryable=spec.retryable or spec.name in settings.retryable,
        gated=spec.gated or spec.name in settings.destructive,
        sensitive=spec.sensitive,
    )


@dataclass(frozen=True)
class ToolPolicy:
    """A tool's deadline and recovery rules in the fleet."""

    timeout: float
    idempotent: bool
    retryable: bool
    gated: bool
    sensitive: frozenset[str]
