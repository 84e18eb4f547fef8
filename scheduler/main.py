"""The coordinator process: build its backend and executor from the settings, run until SIGTERM, drain."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import Callable
from typing import Any

from castor.errors import ConfigError
from castor.executors.local import LocalExecutor
from castor.registry import ToolRegistry

from .coordinator import Coordinator, CoordinatorConfig


def executor_factory(kind: str, settings: Any) -> Any:
    """The executor a coordinator's kernels use: ``local`` (in this process; with a config, its ``[llm]``
    too: ``ModelLocalExecutor``) or ``celery`` (worker pools)."""
    if kind == "local":
        return None if settings is None else functools.partial(ModelLocalExecutor, settings=settings)
    if kind != "celery":
        raise ConfigError(f"unknown executor {kind!r}: use local or celery")
    if settings is None:
        raise ConfigError("--executor celery needs --config (pools, broker)")
    from castor.executors.celery import CeleryExecutor

    return CeleryExecutor.factory(settings)


class ModelLocalExecutor(LocalExecutor):
    """Tools in this process, and the config's ``[llm]``: the kernel takes its model provider and its
    ``in_doubt`` policy from its executor, as it takes a Celery executor's. The provider is called here,
    with this process's key (``castor.llm.fleet.local_provider``); None when ``[llm]`` names none."""

    def __init__(self, tools: ToolRegistry, *, settings: Any) -> None:
        super().__init__(tools)
        from castor.llm.fleet import local_provider

        self.model_provider = local_provider(settings)
        self.model_in_doubt: str = settings.llm.in_doubt

    async def close(self) -> None:
        """Stop the thread pool and close the provider's connections (if it was built)."""
        await super().close()
        if self.model_provider is not None:
            await self.model_provider.aclose()


async def serve(
    config: CoordinatorConfig, *, executor: Any = None, secret: str | None = None,
    setup: Callable[[Coordinator], None] | None = None,
) -> None:
    """Run one coordinator until SIGTERM or SIGINT, then drain it; sensitive arguments are sealed under
    the key of the fleet's ``secret`` (``castor.fleet.sealing``). ``setup`` is given the coordinator before
    it starts (``castor coordinator --metrics-port`` instruments it there)."""
    from castor.backends.redis import redis_backend
    from castor.fleet.sealing import DataKey

    backend = redis_backend(
        config.url, prefix=config.prefix, data_key=DataKey.for_fleet(secret), **config.store_options
    )
    try:
        await backend.ready()  # a Redis that may evict the fleet's keys: refused before anything is taken
    except BaseException:
        await backend.close()
        raise
    coordinator = Coordinator(config, backend, executor)
    if setup is not None:
        try:
            setup(coordinator)
        except BaseException:  # e.g. a metrics port in use: the process stops with one line, its store closed
            await backend.close()
            raise
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, coordinator.drain)
    try:
        await coordinator.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await backend.close()


def main(config: CoordinatorConfig, *, executor: Any = None, log_level: str = "INFO") -> int:
    """Entry point of ``castor coordinator``."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(config, executor=executor))
    return 0
