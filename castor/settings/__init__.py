"""Fleet settings: one ``castor.toml`` parsed once at an entrypoint and passed down, never global.

    [redis]     url, prefix                      where runs, journals, budgets and approvals live
    [broker]    url, queue_prefix, visibility_timeout   Redis (the default) or RabbitMQ (amqp://)
    [security]  secret, max_argument_bytes, insecure_dev, task_max_age   HMAC secret tasks are signed with;
                                                argument size limit; a development fleet without a proper
                                                secret; how old a signed task may be (a week; never more
                                                than the store's retention_seconds: a ConfigError)
    [tools]     import, destructive, idempotent, retryable, timeouts, default_timeout, max_retries, retry_backoff,
                max_result_bytes                 a larger result is journaled as the step's failure
    [pools]     <pool> = [tool, ...]            every other tool runs on ``[workers] default_pool``
    [workers]   default_pool, concurrency, pool, heartbeat, outage_deadline, spool
    [budgets]   <resource> = limit
    [flower]    port, basic_auth
    [coordinator] max_takeovers                 a run taken over more times in a row is quarantined (FAILED)
    [llm]       pool, tools, skew               model calls' pool (and the tools that call models); window skew
                provider, model, models, base_url, api_key_env   what the pool's workers call (the key's variable name)
                in_doubt                         a model call whose process was lost: "retry" (default), "ask", "fail"
    [llm.limits."<provider>/<model>"] rpm, tpm  a provider's rate limits per API key, shared by every worker
    [console]   users, base_url, webhook, poll_interval, resume   ``castor console`` (castor.settings._console)

``Settings`` has one frozen pydantic model per section (``settings.workers.concurrency``), each default
and each range declared once, on its field (``castor.settings._model``). Unknown sections or keys, an
unknown pool, a tool in two pools and a broker URL of a scheme no fleet runs on are ``ConfigError``s at
start-up; a number out of its range or of the wrong type is an ``InvalidValueError`` naming the key, the
file and the range. A process that signs or verifies tasks calls ``require_secret`` (``castor._secret``)
before it starts. ``CASTOR_REDIS_URL``, ``CASTOR_BROKER_URL``, ``CASTOR_SECRET``, ``CASTOR_INSECURE_DEV`` and
``CASTOR_AGENTS`` (``[coordinator] agents``, import specs separated by spaces) override the file. A
command given no ``--config`` finds one with ``find_config``: ``CASTOR_CONFIG``, else ``./castor.toml``,
else ``./config/castor.toml``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from castor._imports import parse_spec
from castor._secret import INSECURE_ENV
from castor.errors import ConfigError, InvalidValueError
from castor.registry import ToolSpec
from castor.settings._model import (
    BrokerSection,
    CoordinatorSection,
    FlowerSection,
    LLMSection,
    ModelLimits,
    RedisSection,
    SecuritySection,
    Settings,
    ToolsSection,
    WorkerPool,
    WorkersSection,
)

__all__ = [
    "CONFIG_ENV", "CONFIG_FILES", "CONFIG_HELP", "REPLY_GRACE", "BrokerSection", "CoordinatorSection",
    "FlowerSection", "LLMSection", "ModelLimits",
    "RedisSection", "SecuritySection", "Settings", "ToolPolicy", "ToolsSection", "WorkerPool",
    "WorkersSection", "broker_visibility", "call_deadline", "find_config", "load_settings", "longest_deadline",
    "tool_policy", "visibility_warning",
]

# Coordinator-side grace on top of a tool's own deadline: queueing, delivery and the journal write.
REPLY_GRACE = 30.0
CONFIG_ENV = "CASTOR_CONFIG"
CONFIG_FILES = ("castor.toml", "config/castor.toml")  # looked for in the working directory, in this order
CONFIG_HELP = (
    f"castor.toml: pools, tools, broker, secret (default: ${CONFIG_ENV}, else ./{CONFIG_FILES[0]}, "
    f"else ./{CONFIG_FILES[1]}, the first that is set or exists; none: the built-in defaults)"
)
AGENTS_ENV = "CASTOR_AGENTS"  # [coordinator] agents: the agents a coordinator imports
# Environment variable -> (section, key) it overrides.
OVERRIDES = {
    "CASTOR_REDIS_URL": ("redis", "url"),
    "CASTOR_BROKER_URL": ("broker", "url"),
    "CASTOR_SECRET": ("security", "secret"),
}


def call_deadline(settings: Settings, timeout: float, retryable: bool, grace: float = REPLY_GRACE) -> float:
    """How long one call may take from its publish to its reply: the tool's ``timeout``, and if it is
    ``retryable`` every retry's with the backoff before each (the worker waits ``retry_backoff * 2**n``
    before retry ``n + 1``), plus ``grace``. The coordinator waits this long; the broker must not hand
    the task to another worker sooner."""
    if not retryable:
        return timeout + grace
    backoff = sum(settings.tools.retry_backoff * 2**n for n in range(settings.tools.max_retries))
    return timeout * (settings.tools.max_retries + 1) + backoff + grace


def longest_deadline(settings: Settings, tools: Iterable[ToolSpec] = ()) -> float:
    """The longest ``call_deadline`` (no grace) of any of ``tools`` and of any deadline the config gives.

    The config's deadlines count as retryable: a process that does not know a tool (Flower, a worker of
    another pool) must still not take it for lost while its retries run.
    """
    configured = max([settings.tools.default_timeout, *settings.tools.timeouts.values()])
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
    every tool it imports (``castor.fleet.workers.main.deadline_tools``); Flower and a worker given ``--tools`` know
    only the config's deadlines, so a tool declaring a long one in code belongs in ``[tools] timeouts``
    too (or the fleet sets ``[broker] visibility_timeout``).
    """
    return max(settings.broker.visibility_timeout or 0.0, longest_deadline(settings, tools) + REPLY_GRACE)


def visibility_warning(settings: Settings, tools: Iterable[ToolSpec] = ()) -> str | None:
    """A warning when ``[broker] visibility_timeout`` is below what ``broker_visibility`` needs (it is
    raised to that); None otherwise, and on RabbitMQ (where the setting does nothing)."""
    configured = settings.broker.visibility_timeout
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
    for var, (section, key) in OVERRIDES.items():
        if env.get(var):
            values[section] = {**values.get(section, {}), key: env[var]}
    if env.get(INSECURE_ENV):
        values["security"] = {**values.get("security", {}), "insecure_dev": _flag(env[INSECURE_ENV], INSECURE_ENV)}
    if env.get(AGENTS_ENV, "").strip():  # spaces between specs: a spec's own comma separates its functions
        values["coordinator"] = {**values.get("coordinator", {}), "agents": tuple(env[AGENTS_ENV].split())}
    settings = Settings(**values)
    if path is not None:
        _check_tool_names(settings)
    return settings


def _flag(text: str, name: str) -> bool:
    """An environment switch: 1/true/yes/on or 0/false/no/off, any case."""
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off", ""):
        return False
    raise InvalidValueError(f"{name}={text!r} is neither 1 (true, yes, on) nor 0 (false, no, off)")


def _parse(path: Path) -> dict[str, Any]:
    """The file's tables, and its name as the ``source`` every error names."""
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    if "source" in raw:  # no section: where the settings came from, which only the loader says
        known = ", ".join(sorted(name for name in Settings.model_fields if name != "source"))
        raise ConfigError(f"{path}: unknown section [source]; known sections: {known}")
    for section, key in (("tools", "import"), ("coordinator", "agents")):
        table = raw.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), list):
            raw[section] = {**table, key: [_beside(spec, path.parent) for spec in table[key]]}
    return {**raw, "source": str(path)}


def _beside(spec: Any, directory: Path) -> Any:
    """A file spec whose relative path names no file from the current directory but one beside the
    config, made absolute: a config a program starts from anywhere (a desktop MCP client starts its
    servers in a directory of its own) finds the tools next to it. Anything else as it is."""
    if not isinstance(spec, str):
        return spec
    try:
        parsed = parse_spec(spec, "tool")
    except ConfigError:
        return spec  # said when it is loaded, with the rest
    target = Path(parsed.target)
    if not parsed.is_file or target.is_absolute() or target.exists() or not (directory / target).exists():
        return spec
    return spec.replace(parsed.target, str((directory / target).resolve()), 1)


def _check_tool_names(settings: Settings) -> None:
    """With ``[tools] import`` given, every tool the file names elsewhere must be one of the imported tools
    (a file only: a ``Settings`` built in Python may route tools that it does not import itself). A name
    that stands for several tools (``tools.py:files``, an MCP server) is known by that name only: its tools
    are routed by it (``[pools] mcp = ["files"]``) and declared on it (``McpServer(destructive=...)``)."""
    tools = settings.tools
    try:
        imported = {name for spec in tools.imports for name in parse_spec(spec, "tool").names}
    except ConfigError as exc:
        raise ConfigError(f"{settings.source}: [tools] import: {exc}") from None
    if not imported:
        return
    named = {
        "tools.destructive": tools.destructive, "tools.idempotent": tools.idempotent,
        "tools.retryable": tools.retryable, "tools.timeouts": set(tools.timeouts),
        **{f"pools.{pool}": set(names) for pool, names in settings.pools.items()},
    }
    for what, names in named.items():
        unknown = sorted(set(names) - imported)
        if unknown:
            problem = f"{what} names tools that [tools] import does not: {', '.join(unknown)}"
            raise ConfigError(f"{settings.source}: {problem}")


def tool_policy(settings: Settings, spec: ToolSpec) -> ToolPolicy:
    """What the fleet does with ``spec``: the tool's declarations with the config's lists on top."""
    return ToolPolicy(
        timeout=settings.timeout_of(spec.name, spec.timeout),
        idempotent=spec.idempotent or spec.name in settings.tools.idempotent,
        retryable=spec.retryable or spec.name in settings.tools.retryable,
        gated=spec.gated or spec.name in settings.tools.destructive,
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
