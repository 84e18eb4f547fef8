"""The worker entrypoint per pool: ``castor worker --pool fs [--tools ...] [--concurrency 4]``.

A worker serves the tools of one pool, consuming the queue ``<queue_prefix>.<pool>``. Its tools come
from ``--tools`` import specs or from the config's ``[tools] import`` (those the config maps to the pool).
With no ``[pools]`` in the config (or no config at all), ``--pool NAME --tools SPECS`` serves exactly
those tools on ``<queue_prefix>.NAME``: the coordinators' config says which pool a tool runs on.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import get_args

from castor.backends.redis.keys import pool_workers
from castor.errors import ConfigError
from castor.fleet.loading import load_tools, source_of
from castor.fleet.sealing import require_secret
from castor.llm.fleet import missing_key
from castor.registry import ToolRegistry, ToolSpec
from castor.settings import Settings, WorkerPool

from ._control import restrict_remote_control
from ._deadletter import DeadLetters
from ._envelopes import harden_consumer
from ._heartbeat import Presence
from ._models import ModelCalls
from ._preflight import preflight
from ._scripts import replay_spool
from .app import make_app
from .runtime import WorkerRuntime
from .tasks import register_tools

log = logging.getLogger("castor.worker")
POOL_IMPLEMENTATIONS: tuple[str, ...] = get_args(WorkerPool)


def worker_registry(settings: Settings, pool: str, tool_specs: Sequence[str] = ()) -> ToolRegistry:
    """The tools a worker of ``pool`` serves; ``ConfigError`` for a pool the config does not define or a
    tool it puts on another pool. Without ``[pools]`` (or ``[llm] tools``), ``tool_specs`` are served on any
    pool as given."""
    # The [llm] pool also answers the kernels' model calls (model:<id>) when [llm] names a provider.
    models = ModelCalls(settings).tools() if pool == settings.llm.pool else []
    if tool_specs and not settings.pools and not settings.llm.tools:
        return _registry(settings, [*load_tools(tool_specs), *models])
    settings.check_pool(pool)
    explicit = bool(tool_specs)
    specs = tool_specs or settings.tools.imports
    tools = load_tools(specs) if specs or not models else []  # a models-only pool imports no tools
    chosen: list[tuple[str, object]] = list(models)
    for name, func in tools:
        home = settings.pool_of(name, source_of(func))
        if home == pool:
            chosen.append((name, func))
        elif explicit:
            raise ConfigError(f"tool {name!r} runs on pool {home!r} in {settings.source}, not on {pool!r}")
    if not chosen:
        raise ConfigError(
            f"pool {pool!r} has no tools: pass --tools or list them in [tools] import"
            + (" (or name a model provider in [llm])" if pool == settings.llm.pool else "")
        )
    return _registry(settings, chosen)


def deadline_tools(settings: Settings, registry: ToolRegistry, tool_specs: Sequence[str] = ()) -> list[ToolSpec]:
    """The tools whose deadlines the worker's broker visibility timeout must exceed: its own, and, when it
    took its tools from the config, every tool the config imports. On a Redis broker any consumer puts
    back any pool's task unacked past its own visibility timeout, so a worker of one pool must not give
    up on another pool's long tool (a tool named only by ``--tools`` elsewhere counts through the
    config's ``[tools] timeouts``)."""
    if tool_specs or not settings.tools.imports:
        return list(registry)
    return [*registry, *_registry(settings, load_tools(settings.tools.imports))]


def _registry(settings: Settings, tools: Sequence[tuple[str, object]]) -> ToolRegistry:
    names = {name for name, _ in tools}
    return ToolRegistry(tools, destructive=settings.tools.destructive & names)


def worker_argv(
    settings: Settings, pool: str, *, concurrency: int | None = None, pool_impl: str | None = None,
    loglevel: str = "INFO", fast_start: bool = False,
) -> list[str]:
    """The ``celery worker`` arguments of a worker of ``pool``."""
    impl = pool_impl or settings.workers.pool
    if impl not in POOL_IMPLEMENTATIONS:
        raise ConfigError(f"worker pool implementation must be one of {', '.join(POOL_IMPLEMENTATIONS)}, not {impl!r}")
    argv = [
        "worker",
        f"--queues={settings.queue_of(pool)}",
        f"--concurrency={concurrency or settings.workers.concurrency}",
        f"--pool={impl}",
        f"--hostname={pool}-{os.getpid()}@%h",
        f"--loglevel={loglevel}",
        "--task-events",
        # Both act on what other nodes send over the broker, which anyone who can write to it can forge
        # (castor.fleet.workers._control): mingle merges their revoked task ids, gossip obeys their events.
        "--without-mingle",
        "--without-gossip",
    ]
    if fast_start:  # no heartbeat events either: starts in ~0.7 s instead of ~2 s
        argv.append("--without-heartbeat")
    return argv


def run_worker(
    settings: Settings, pool: str, tool_specs: Sequence[str] = (), *, concurrency: int | None = None,
    pool_impl: str | None = None, loglevel: str = "INFO", fast_start: bool = False,
    observe: Callable[[Settings, WorkerRuntime, str], None] | None = None,
) -> int:
    """Start a worker of ``pool`` in this process and serve until it is stopped (never without a proper
    secret, unless the fleet is an insecure development one: ``require_secret``); its exit code (Celery's
    ``worker_main`` drops it: a worker stopped by an unrecoverable error exited 0, and no supervisor
    restarted it). ``observe`` is given the settings, the runtime and the execution pool before the worker
    starts (``castor worker --metrics-port`` / ``--trace`` instrument the runtime there)."""
    registry = worker_registry(settings, pool, tool_specs)
    argv = worker_argv(
        settings, pool, concurrency=concurrency, pool_impl=pool_impl, loglevel=loglevel, fast_start=fast_start
    )
    require_secret(settings, f"castor worker --pool {pool}")
    specs = list(registry)
    app = make_app(settings, tools=deadline_tools(settings, registry, tool_specs))
    preflight(app, settings, specs)  # a broker or a Redis that does not answer stops the worker here, in one line
    replay_spool(settings.redis.url, settings.redis.prefix, settings.workers.spool)  # what a past outage left behind
    runtime = WorkerRuntime(settings, registry, pool=pool)
    lacking = missing_key(settings, pool)
    if lacking:
        log.warning(lacking)
    if observe is not None:
        observe(settings, runtime, pool_impl or settings.workers.pool)
    letters = DeadLetters(settings.redis.url, settings.redis.prefix, pool)  # the pool's one dead-letter list
    register_tools(app, runtime, letters)
    # What Celery and kombu do with a message before a task's strategy checks it: nothing forged may stop,
    # hang or fill this process there (process-wide changes: this worker's own, made before it starts).
    harden_consumer(settings, letters)
    restrict_remote_control(app)  # a control message is unsigned: answer questions, take no orders
    node = f"{pool}-{os.getpid()}@{socket.gethostname()}"  # the node name worker_argv gives Celery
    presence = Presence(settings.redis.url, pool_workers(settings.redis.prefix, pool), node).start()
    try:
        return int(app.start(argv) or 0)
    finally:
        presence.close()
