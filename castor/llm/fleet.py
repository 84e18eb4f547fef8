"""Model calls in the fleet: the coordinator's stand-in for the provider, and the provider a worker builds.

In a fleet run a model call made through the kernel's provider runs on a worker of ``[llm] pool`` (``llm``
by default), so API keys live on those workers and never on a coordinator. Both sides read the same
``[llm]`` section of ``castor.toml``:

- a coordinator's kernel gets ``FleetModel`` (``model_provider(settings)``): the model ids the pool serves,
  the price table and the deadline, and no key. The model stage (``castor.kernel.model``) hands the step
  to the executor, which sends it to the pool as the task ``castor.tool.model:<id>``;
- a worker of the pool builds the real provider (``build_provider``) from ``provider``, ``model``,
  ``base_url`` and the key in the environment variable ``api_key_env`` names, and calls it under the
  fleet's rate limiter (``castor.fleet.workers._models``).

A model that lives in the agent's process (``model_call(invoke=...)``: a framework's own model object) is
called there, as in an embedded run: in the fleet, in the coordinator's process. A framework agent whose
model is Castor's (``castor.frameworks.langchain.CastorChatModel``, the other frameworks' ``CastorModel``)
calls the kernel's provider instead, so its calls run on the pool too. Without a fleet executor (``castor
run`` on its own), the kernel calls the provider ``local_provider`` builds, with this process's key.
Imported only where a fleet is configured: nothing here loads httpx until a provider is built.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from castor.llm.cost import Price, price_table
from castor.llm.types import ModelCallError

MODEL_PREFIX = "model:"  # a model step's tool name is model:<id> (castor.kernel.model)
DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


class FleetModel:
    """A coordinator's provider: what the ``llm`` pool serves, without a key and without calling anything."""

    name = "llm pool"
    remote = True  # the model stage sends its calls to the executor (the pool), never to ``complete``

    def __init__(self, model: str, models: frozenset[str], prices: Mapping[str, Price], timeout: float | None) -> None:
        self.model = model
        self.models = frozenset({model, *models})
        self.prices = dict(prices)
        self.timeout = timeout

    async def complete(self, request: dict[str, Any]) -> Any:
        """Never called: a fleet's model calls run on the pool's workers."""
        raise ModelCallError(
            f"model {self.model!r} is served by the fleet's llm pool: this kernel needs the Celery executor to call it"
        )


def model_ids(settings: Any) -> list[str]:
    """The model ids ``[llm]`` says the pool serves (its ``model`` first); none without a ``provider``."""
    llm = settings.llm
    if llm.provider is None:
        return []
    return [llm.model, *sorted(llm.models - {llm.model})]


def model_provider(settings: Any) -> FleetModel | None:
    """The coordinator's stand-in for the pool's provider, or None when ``[llm]`` names no provider."""
    llm = settings.llm
    if llm.provider is None:
        return None
    return FleetModel(llm.model, frozenset(llm.models), price_table(llm.prices), llm.timeout)


class LocalModel:
    """The ``[llm]`` provider of a kernel that calls it in its own process, built at its first call: a
    command that calls no model (an approval of a run without model steps to make) needs no key."""

    name = "llm provider"

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.model = settings.llm.model
        self.models = frozenset({self.model, *settings.llm.models})
        # read by a kernel that takes this provider from its executor (a coordinator's, castor.fleet.scheduler)
        self.prices = price_table(settings.llm.prices)
        self.timeout = settings.llm.timeout
        self._provider: Any = None

    def provider(self) -> Any:
        """The provider ``build_provider`` makes (once); ``ModelCallError`` if the config cannot make one."""
        if self._provider is None:
            self._provider = build_provider(self.settings, self.model)
        return self._provider

    async def complete(self, request: dict[str, Any]) -> Any:
        """The provider's answer (the request's ``model``, if it names one, is the model asked)."""
        return await self.provider().complete(request)

    def stream(self, request: dict[str, Any]) -> Any:
        """The provider's streamed answer."""
        return self.provider().stream(request)

    async def aclose(self) -> None:
        """Close the provider's connections, if it was built."""
        aclose = getattr(self._provider, "aclose", None)
        if aclose is not None:
            await aclose()


def local_provider(settings: Any) -> LocalModel | None:
    """The provider a kernel that runs its tools in its own process (``castor run``, ``approve``, ``fork``
    without a fleet executor) calls for its model calls: ``[llm] provider`` with the key in this process's
    environment, serving ``[llm] model`` and ``models``; None when ``[llm]`` names no provider."""
    return LocalModel(settings) if settings.llm.provider is not None else None


def model_timeout(settings: Any, tool: str) -> float:
    """The deadline of a model step, the same on the coordinator and the worker."""
    return float(settings.timeout_of(tool, settings.llm.timeout))


def api_key_of(settings: Any, env: Mapping[str, str] | None = None) -> str:
    """The API key a worker finds in its environment under ``[llm] api_key_env`` (or the provider's usual
    variable); empty if it is not set (a local server may need none)."""
    llm = settings.llm
    name = llm.api_key_env or DEFAULT_KEY_ENV.get(llm.provider or "", "")
    return (os.environ if env is None else env).get(name, "") if name else ""


def missing_key(settings: Any, pool: str, env: Mapping[str, str] | None = None) -> str | None:
    """What a worker of ``pool`` should say at start when it serves the model calls of a provider whose API
    key is not in its environment (every call would fail), else None. A provider at a ``base_url`` of its
    own (a local server) may need no key: not said."""
    llm = settings.llm
    if pool != llm.pool or llm.provider is None or llm.base_url or api_key_of(settings, env):
        return None
    name = llm.api_key_env or DEFAULT_KEY_ENV.get(llm.provider, "")
    return (f"pool {pool} serves [llm] provider {llm.provider}, whose API key ${name} is not set in this "
            "worker's environment: every model call it takes will fail until it is")


def build_provider(settings: Any, model: str, env: Mapping[str, str] | None = None) -> Any:
    """The provider a worker of the pool calls for ``model``: ``[llm] provider`` at ``base_url`` with the key
    from its environment. ``ModelCallError`` if the config names none or the provider needs a key it lacks."""
    llm = settings.llm
    key = api_key_of(settings, env) or None
    if llm.provider == "openai":
        from castor.llm.openai import OPENAI_URL, OpenAICompatible

        return OpenAICompatible(model, base_url=llm.base_url or OPENAI_URL, api_key=key or "")
    if llm.provider == "anthropic":
        from castor.llm.anthropic import Anthropic

        options = {"base_url": llm.base_url} if llm.base_url else {}
        return Anthropic(model, api_key=key, **options)
    raise ModelCallError(f"{settings.source}: [llm] names no provider: set provider = \"openai\" or \"anthropic\"")
