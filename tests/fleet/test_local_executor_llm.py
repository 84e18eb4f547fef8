"""A coordinator with ``--executor local --config castor.toml`` honours the config's ``[llm]``: its kernels call
the ``[llm]`` provider in the coordinator's process (``castor.llm.fleet.local_provider``, as ``castor run
--config`` does) and answer a model call left in doubt by ``[llm] in_doubt``, as a Celery executor's kernels do."""

from __future__ import annotations

from pathlib import Path

import pytest
from castor.fleet.scheduler._kernels import DrainGate, Kernels
from castor.fleet.scheduler.main import executor_factory

from castor.backends.sqlite import sqlite_backend
from castor.checkpoint import RunSpec
from castor.errors import InDoubtError
from castor.llm.cost import Price
from castor.llm.fleet import LocalModel
from castor.settings import Settings
from tests.llm.test_model_in_doubt import agent, left_in_doubt

LLM = {"provider": "openai", "model": "gpt-4o", "prices": {"gpt-4o": {"input": 2.5, "output": 10.0}}, "timeout": 7}


async def test_the_kernels_call_the_config_provider_with_its_prices_and_deadline(tmp_path: Path) -> None:
    kernels = Kernels(sqlite_backend(str(tmp_path / "castor.db")), executor_factory("local", Settings(llm=LLM)),
                      DrainGate())
    models = kernels.kernel_for(RunSpec(agent="a:b")).services.models
    assert isinstance(models.provider, LocalModel) and models.default_model == "gpt-4o" and not models.on_pool
    assert models.prices == {"gpt-4o": Price(2.5, 10.0)} and models.timeout == 7 and models.in_doubt == "retry"
    await kernels.close()
    assert executor_factory("local", None) is None  # no config: no [llm] to read


async def test_a_model_call_in_doubt_is_answered_by_the_config_policy(tmp_path: Path) -> None:
    backend = sqlite_backend(str(tmp_path / "castor.db"))
    backend.leased = True  # a coordinator's store: its own model calls are claimed
    kernels = Kernels(backend, executor_factory("local", Settings(llm={**LLM, "in_doubt": "fail"})), DrainGate())
    kernel = kernels.kernel_for(RunSpec(agent="a:b"))
    await backend.budgets.set_scope("team", {"tokens": 1_000})
    await left_in_doubt(backend, "lost")
    with pytest.raises(InDoubtError, match="not made again"):  # under "retry" the provider would be called
        await kernel.run(agent, pid="lost", scopes=["team"])
    await kernels.close()
