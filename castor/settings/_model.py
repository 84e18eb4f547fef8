"""The settings' schema: one frozen pydantic model per ``castor.toml`` section, each default and each
range stated once, on its field. Upper bounds keep arithmetic sane (``retry_backoff * 2**max_retries``
must stay a number) and catch typos (a port of 99999); they are far above what a fleet needs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from castor.errors import ConfigError
from castor.settings._console import ConsoleSection
from castor.settings._ranges import settings_error

DAY = 86400.0
# How long the Redis store keeps a finished run when its URL says nothing (castor.backends.redis.runs.WEEK,
# not imported: settings load without redis).
DEFAULT_RETENTION = 7 * DAY
# The brokers a fleet runs on, by URL scheme: kombu's Redis transport, and RabbitMQ through py-amqp.
BROKER_SCHEMES = {
    "redis": "redis", "rediss": "redis", "redis+socket": "redis", "sentinel": "redis", "redis+sentinel": "redis",
    "amqp": "amqp", "amqps": "amqp", "pyamqp": "amqp",
}
# Celery's execution pools a worker runs its tasks on (``castor worker --pool-impl``).
WorkerPool = Literal["threads", "prefork", "solo"]

# strict: a number is a number (not "4", not true), an integer is an integer (not 4.0)
Seconds = Annotated[float, Field(strict=True, gt=0, le=30 * DAY)]  # a deadline: positive, finite, at most 30 days
Budget = Annotated[float, Field(strict=True, ge=0)]
Names = frozenset[str]  # tool names; a TOML list
MODEL_TOOL_PREFIX = "llm."  # a tool named so is a model call: it runs on ``[llm] pool``
MODEL_STEP_PREFIX = "model:"  # a kernel's model step (castor.kernel.model): it runs on ``[llm] pool`` too
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")  # an environment variable's name


class Section(BaseModel):
    """A ``castor.toml`` section: unknown keys are errors, and settings never change once loaded.

    Sections keep pydantic's own ``__init__``: pydantic calls a custom one for every nested section, so
    ``Settings.__init__`` alone turns a ``ValidationError`` into Castor's one-line errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisSection(Section):
    """``[redis]``: where runs, journals, budgets and approvals live."""

    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "castor"  # every key starts with it
    # Run on a Redis that may evict keys (a maxmemory and a policy but noeviction): refused unless true, as
    # an evicted record, claim or lease breaks Castor's promises (castor.backends.redis.eviction).
    allow_eviction: Annotated[bool, Field(strict=True)] = False
    # A claim (and a journal record) counts once this many replicas acknowledged it, within replica_timeout
    # seconds (Redis's WAIT): a failover to a replica then loses no claim a call ran under
    # (castor.backends.redis.replicas). 0: no wait, as Redis itself does.
    replicas: Annotated[int, Field(strict=True, ge=0, le=64)] = 0
    replica_timeout: Annotated[float, Field(strict=True, gt=0, le=4)] = 1.0

    def store_options(self) -> dict[str, Any]:
        """The Redis store options (``castor.backends.redis.OPTIONS``) this section sets."""
        return {
            "allow_eviction": self.allow_eviction, "replicas": self.replicas, "replica_timeout": self.replica_timeout
        }


class BrokerSection(Section):
    """``[broker]``: Redis (the default: the ``[redis]`` URL) or RabbitMQ (``amqp://``)."""

    url: str | None = None
    queue_prefix: str = "castor"  # pool fs consumes queue castor.fs
    visibility_timeout: Seconds | None = None  # None: just above the longest deadline (``broker_visibility``)


class SecuritySection(Section):
    """``[security]``: the HMAC secret tasks are signed with, the argument size limit, a development fleet."""

    secret: Annotated[str | None, Field(repr=False)] = None
    max_argument_bytes: Annotated[int, Field(strict=True, ge=1, le=64 * 1024 * 1024)] = 64 * 1024
    insecure_dev: Annotated[bool, Field(strict=True)] = False  # starts without a proper secret, warning every time
    # A signed task older than this is refused unrun: past the store's retention (a week by default) the
    # records that answer a task sent again are gone, and a copy read off the broker would run the call again.
    task_max_age: Annotated[float, Field(strict=True, ge=60, le=366 * DAY)] = 7 * DAY


class ToolsSection(Section):
    """``[tools]``: the tools to import and the fleet's rules for them on top of their declarations."""

    imports: Annotated[tuple[str, ...], Field(alias="import")] = ()
    destructive: Names = frozenset()
    idempotent: Names = frozenset()
    retryable: Names = frozenset()
    timeouts: Mapping[str, Seconds] = Field(default_factory=dict)
    default_timeout: Seconds = 300.0
    max_retries: Annotated[int, Field(strict=True, ge=0, le=30)] = 3
    retry_backoff: Annotated[float, Field(strict=True, ge=0, le=3600)] = 1.0  # seconds, doubled on every retry
    # a tool result larger than this (canonical JSON) is journaled as the step's failure, not stored in Redis
    max_result_bytes: Annotated[int, Field(strict=True, ge=1024, le=256 * 1024 * 1024)] = 8 * 1024 * 1024


class WorkersSection(Section):
    """``[workers]``: how a worker runs (``castor worker``'s defaults)."""

    default_pool: str = "default"  # the pool of every tool ``[pools]`` does not name
    concurrency: Annotated[int, Field(strict=True, ge=1, le=1024)] = 4
    pool: WorkerPool = "threads"
    # TTL (s) of a running step's heartbeat: a dead worker's step is in doubt after it
    heartbeat: Annotated[float, Field(strict=True, gt=0, le=3600)] = 10.0
    outage_deadline: Seconds = 300.0  # how long (s) a worker keeps asking a lost Redis to take a finished step
    spool: str = "~/.castor/spool"  # where a finished step waits for Redis past the outage deadline


class FlowerSection(Section):
    """``[flower]``: the monitoring UI."""

    port: Annotated[int, Field(strict=True, ge=1, le=65535)] = 5555
    basic_auth: Annotated[str | None, Field(repr=False)] = None


class CoordinatorSection(Section):
    """``[coordinator]``: a run taken over more than ``max_takeovers`` times in a row is quarantined; with
    ``agents`` (import specs; a file or module alone allows each of its functions), coordinators import
    only those agents and the tools of ``[tools] import`` (``castor.fleet.scheduler._allowed``)."""

    max_takeovers: Annotated[int, Field(strict=True, ge=0, le=1000)] = 3
    agents: tuple[str, ...] = ()


class PriceSection(Section):
    """A model's price: dollars per million input and output tokens."""

    input: float = 0.0
    output: float = 0.0

    @field_validator("input", "output", mode="before")
    @classmethod
    def _dollars(cls, value: Any) -> float:
        # a TOML integer or float (not a string, not a boolean), finite and not negative
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
            raise ValueError(f"must be dollars per million tokens (a number >= 0), got {value!r}")
        return float(value)


class ModelLimits(Section):
    """``[llm.limits."<provider>/<model>"]``: what the provider allows one API key per minute (None: no limit)."""

    rpm: Annotated[int | None, Field(strict=True, ge=1, le=100_000_000)] = None  # requests per minute
    tpm: Annotated[int | None, Field(strict=True, ge=1, le=100_000_000_000)] = None  # tokens per minute


class LLMSection(Section):
    """``[llm]``: where model calls run in the fleet, the providers' rate limits every worker shares, and
    what model calls cost.

    ``pool``: the worker pool of model calls (its workers hold the API keys; coordinators need none). A
    tool in ``tools`` (one that calls a model itself), or named ``llm.<anything>``, runs there unless
    ``[pools]`` names it. ``limits``: per ``"provider/model"``, ``"provider/*"`` or ``"*"`` (see
    ``castor.llm.ratelimit``); ``skew``: seconds added to each minute window for the time between a
    worker's acquire and the provider seeing the request. ``prices``: ``[llm.prices."gpt-4o"]`` ``input =
    2.5`` ``output = 10.0`` (dollars per million tokens), what a model call is charged in ``usd``;
    ``timeout``: the seconds a model call may take. ``provider`` (``openai``: any OpenAI-compatible server,
    or ``anthropic``), ``model``, ``models`` (more model ids it serves), ``base_url`` and ``api_key_env``
    (the NAME of the environment variable holding the key on the workers, never the key): the provider
    the ``llm`` pool's workers build to answer the kernel's model calls (``castor.llm.fleet``). ``in_doubt``:
    what becomes of a model call whose process was lost mid-call (``castor.kernel.model_doubt``): ``retry``
    (made once more, the first call still charged), ``ask`` (a human decides) or ``fail``."""

    pool: str = "llm"
    provider: Literal["openai", "anthropic"] | None = None
    model: str = ""
    models: Names = frozenset()
    base_url: str | None = None
    api_key_env: str = ""
    # a model step's request crosses the broker whole (a conversation): its bound, above [security]'s for tools
    max_request_bytes: Annotated[int, Field(strict=True, ge=1024, le=64 * 1024 * 1024)] = 4 * 1024 * 1024
    tools: Names = frozenset()
    limits: Mapping[str, ModelLimits] = Field(default_factory=dict)
    skew: Annotated[float, Field(strict=True, ge=0, le=60)] = 1.0
    prices: Mapping[str, PriceSection] = Field(default_factory=dict)
    timeout: Seconds | None = None
    # A model call whose process was lost mid-call: made once more, a human asked, or the step failed.
    in_doubt: Literal["retry", "ask", "fail"] = "retry"

    @model_validator(mode="after")
    def _names(self) -> LLMSection:
        if self.api_key_env and not ENV_NAME.fullmatch(self.api_key_env):
            raise ConfigError(
                f"[llm] api_key_env must name an environment variable (like OPENAI_API_KEY), not hold a key: "
                f"got {self.api_key_env[:4]!r}..."
            )
        if self.provider is not None and not self.model:
            raise ConfigError(f"[llm] provider = {self.provider!r} needs a model: add model = \"<model id>\"")
        for name in self.limits:
            if name != "*" and (name.count("/") != 1 or not all(name.split("/"))):
                raise ConfigError(f"[llm.limits] {name!r}: name a limit 'provider/model', 'provider/*' or '*'")
        return self


class Settings(Section):
    """Everything a coordinator, a worker or Flower needs to join the fleet: one field per section, and
    ``source`` (the file, or ``<defaults>``) that every error names.

    ``Settings(workers={"concurrency": 8})`` validates as a file does: a bad value is a ``ConfigError``
    (``InvalidValueError`` for a number out of its range or of the wrong type) naming the key."""

    redis: RedisSection = RedisSection()
    broker: BrokerSection = BrokerSection()
    security: SecuritySection = SecuritySection()
    tools: ToolsSection = ToolsSection()
    pools: Mapping[str, tuple[str, ...]] = Field(default_factory=dict)  # every other tool: [workers] default_pool
    workers: WorkersSection = WorkersSection()
    budgets: Mapping[str, Budget] = Field(default_factory=dict)
    flower: FlowerSection = FlowerSection()
    coordinator: CoordinatorSection = CoordinatorSection()
    llm: LLMSection = LLMSection()
    console: ConsoleSection = ConsoleSection()
    source: str = "<defaults>"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise settings_error(exc, Settings, data, str(data.get("source", "<defaults>"))) from None

    def updated(self, **changes: Any) -> Settings:
        """These settings with some keys of some sections changed, validated again:
        ``settings.updated(redis={"prefix": "team"})``. ``pools``, ``budgets`` and ``source`` are
        replaced whole."""
        data = self.model_dump(by_alias=True)
        for name, change in changes.items():
            current = data.get(name)
            if isinstance(current, dict) and isinstance(change, Mapping) and name not in ("pools", "budgets"):
                change = {**current, **change}
            data[name] = change
        return Settings(**data)

    def on_redis(self, url: str, prefix: str) -> Settings:
        """These settings on another Redis (``--redis``): a broker that was the old Redis (the default, or
        the same URL written out in ``[broker] url``) moves with it; another broker (RabbitMQ, a Redis of
        its own) stays where it is."""
        broker = {"url": None} if self.broker.url in (None, self.redis.url) else {}
        return self.updated(redis={"url": url, "prefix": prefix}, broker=broker)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        """What no single key can check: one pool per tool, a broker URL a fleet runs on."""
        owner: dict[str, str] = {}
        for pool, tools in self.pools.items():
            for tool in tools:
                if tool in owner:
                    raise ConfigError(
                        f"{self.source}: tool {tool!r} is in two pools, {owner[tool]!r} and {pool!r}; "
                        "a tool runs on exactly one pool"
                    )
                owner[tool] = pool
        if self.broker.url is not None:  # the Redis URL as a broker is Redis, whatever its form
            _check_broker_url(self.broker.url, self.source)
        for what, url in (("[redis] url", self.redis.url), ("[broker] url", self.broker.url)):
            _check_sentinel_url(url, f"{self.source}: {what}")
        self.check_task_age(retention_of(dict(parse_qsl(urlsplit(self.redis.url).query))))
        return self

    def check_task_age(self, retention: float | None) -> None:
        """``ConfigError`` if a signed task may live longer (``[security] task_max_age``) than its run's records
        (the store's ``retention``; None: unknown, left to the store): past the retention a copy of the task
        read off the broker finds no record to answer it, and runs its tool again."""
        task_max_age = self.security.task_max_age
        if retention is not None and task_max_age > retention:
            raise ConfigError(
                f"{self.source}: [security] task_max_age = {task_max_age:g} seconds is longer than the store's "
                f"retention_seconds = {retention:g}: a task could outlive its run's records and run its tool "
                "again; make task_max_age at most retention_seconds"
            )

    # --- routing ----------------------------------------------------------------------------------

    @property
    def pool_names(self) -> list[str]:
        """Every pool: the configured ones, the default pool and the model calls' pool."""
        return sorted({*self.pools, self.workers.default_pool, self.llm.pool})

    def pool_of(self, tool: str, source: str | None = None) -> str:
        """The pool that runs ``tool``: the one ``[pools]`` puts it in (by its name, or by the name of the
        ``source`` it was imported from: an MCP server's tools), else ``[llm] pool`` for a model call (a tool
        of ``[llm] tools`` or named ``llm.*``), else the default pool."""
        for pool, tools in self.pools.items():
            if tool in tools or (source is not None and source in tools):
                return pool
        if tool in self.llm.tools or tool.startswith((MODEL_TOOL_PREFIX, MODEL_STEP_PREFIX)):
            return self.llm.pool
        return self.workers.default_pool

    def queue_of(self, pool: str) -> str:
        """The broker queue a pool consumes: ``<queue_prefix>.<pool>``."""
        return f"{self.broker.queue_prefix}.{pool}"

    def check_pool(self, pool: str) -> str:
        """``pool`` if it is configured; a ``ConfigError`` naming the known pools otherwise."""
        if pool not in self.pool_names:
            raise ConfigError(f"unknown pool {pool!r} in {self.source}; pools: {', '.join(self.pool_names)}")
        return pool

    def timeout_of(self, tool: str, declared: float | None = None) -> float:
        """The tool's deadline: the config's, else what the tool declares, else the default."""
        configured = self.tools.timeouts.get(tool)
        if configured is not None:
            return float(configured)
        return float(declared) if declared is not None else self.tools.default_timeout

    @property
    def broker_url(self) -> str:
        """The broker URL (the Redis URL unless ``[broker] url`` is set)."""
        return self.broker.url or self.redis.url

    @property
    def broker_transport(self) -> str:
        """``"redis"`` or ``"amqp"`` (RabbitMQ): what the broker URL's scheme names."""
        return BROKER_SCHEMES.get(urlsplit(self.broker_url).scheme, "redis")


def retention_of(options: Mapping[str, Any]) -> float | None:
    """The ``retention_seconds`` a Redis store's URL options ask for (the store's default when they name
    none); None when it is not a number (the store refuses it when it opens, naming it)."""
    given = options.get("retention_seconds")
    if given is None:
        return DEFAULT_RETENTION
    try:
        return float(given)
    except (TypeError, ValueError):
        return None


def _check_sentinel_url(url: str | None, where: str) -> None:
    """A ``redis+sentinel://`` URL read at once, or a ``ConfigError`` saying what is wrong with it, before
    anything connects (never showing its password)."""
    if url is None or not url.startswith("redis+sentinel://"):
        return
    try:
        from castor.backends.redis.sentinel import parse  # imports redis: only for a Sentinel URL
    except ModuleNotFoundError:  # without redis installed the store says what to install
        return
    try:
        parse(url)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_broker_url(url: str, source: str) -> None:
    """A broker URL a fleet can use, or a ``ConfigError`` that says why not, before anything connects (the
    message never shows the URL: it may hold a password)."""
    where = f"{source}: the broker URL ([broker] url or CASTOR_BROKER_URL)"
    try:
        parts = urlsplit(url)
        if parts.scheme != "redis+sentinel":  # several hosts: read by castor.backends.redis.sentinel
            parts.port  # noqa: B018  # raises on a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"{where} is malformed: {exc}") from exc
    if parts.scheme not in BROKER_SCHEMES:
        raise ConfigError(
            f"{where} starts with {parts.scheme + '://' if parts.scheme else 'no scheme'}, which names no broker "
            "Castor runs on: use redis:// (rediss://, redis+socket://, redis+sentinel://) or amqp:// (amqps://) for "
            "RabbitMQ"
        )
