"""The parts of the fleet's model calls that need no process: the ``[llm]`` provider settings, the pool's model
tasks, and a kernel whose executor is a fleet's (the step goes to the executor; the worker's side settles and
journals with the very record builder the embedded kernel uses)."""

from __future__ import annotations

from typing import Any

import pytest
from castor.fleet.workers._models import ModelCalls
from castor.fleet.workers.main import worker_registry

from castor import Castor
from castor.errors import ConfigError
from castor.lib import complete, model_call, stream
from castor.llm import ModelCallError, Scripted
from castor.llm.fleet import FleetModel, build_provider, model_provider
from castor.llm.types import ProviderHTTPError
from castor.seams import ToolCall
from castor.settings import Settings

LLM = {"provider": "openai", "model": "m1", "models": ["m2"], "base_url": "http://127.0.0.1:9/v1",
       "api_key_env": "FLEET_TEST_KEY", "prices": {"m1": {"input": 1.0, "output": 2.0}}}


def test_the_llm_section_names_a_key_variable_never_a_key_and_a_provider_needs_a_model() -> None:
    with pytest.raises(ConfigError, match="api_key_env must name an environment variable"):
        Settings(llm={**LLM, "api_key_env": "sk-live-1234"})
    with pytest.raises(ConfigError, match="needs a model"):
        Settings(llm={"provider": "openai"})
    settings = Settings(llm=LLM)
    assert settings.pool_of("model:m1") == "llm"
    assert settings.updated(pools={"gpu": ["model:m1"]}).pool_of("model:m1") == "gpu"


def test_a_worker_of_the_llm_pool_serves_the_configured_models_with_the_key_of_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(llm={**LLM, "timeout": 42})
    registry = worker_registry(settings, "llm")
    assert registry.names() == ["model:m1", "model:m2"]
    assert registry.get("model:m1").timeout == 42
    monkeypatch.setenv("FLEET_TEST_KEY", "sk-from-env")
    provider = build_provider(settings, "m2")
    assert provider.model == "m2" and provider.headers["Authorization"] == "Bearer sk-from-env"
    with pytest.raises(ModelCallError, match="OPENAI_API_KEY"):
        build_provider(Settings(llm={"provider": "openai", "model": "gpt-4o"}), "gpt-4o", env={})
    with pytest.raises(ConfigError, match="or name a model provider in"):
        worker_registry(Settings(), "llm")


class PoolExecutor:
    """A fleet executor in this process: does what a worker of the llm pool does with a model task."""

    writes_journal = True

    def __init__(self, settings: Settings, answer: dict[str, Any] | Exception) -> None:
        self.model_provider = model_provider(settings)
        self.models = ModelCalls(settings)
        self.answer = answer
        self.sent: list[ToolCall] = []
        self.backend: Any = None

    async def execute(self, call: ToolCall) -> Any:
        self.sent.append(call)
        job = ToolCall(call.run_id, call.step, call.tool_name, call.journaled_arguments(),
                       charged=dict(call.charged or {}), usage=call.usage)  # as decoded off the wire
        if isinstance(self.answer, Exception):
            raise self.answer
        response = dict(self.answer)
        await self.models.settle(self.backend, job, response)
        await self.backend.journal.append(job.run_id, job.step, job.record(response))
        call.finished_at = job.finished_at
        return response

    async def close(self) -> None:
        pass


async def test_a_kernel_with_a_fleet_executor_sends_its_model_calls_to_the_pool_and_takes_the_workers_record() -> None:
    settings = Settings(llm=LLM)
    pool = PoolExecutor(settings, {"text": "hi", "usage": {"input_tokens": 7, "output_tokens": 3}, "model": "m1"})
    kernel = Castor(executor=lambda tools: pool, budgets={"tokens": 1_000, "usd": 1.0}, scopes=["team"])
    pool.backend = kernel.backend
    await kernel.backend.budgets.set_scope("team", {"tokens": 500})
    assert isinstance(kernel.services.models.provider, FleetModel)

    async def agent() -> str:
        return (await complete(prompt="hello", max_tokens=50)).text

    cp = await kernel.run(agent)
    assert cp.status == "COMPLETED" and cp.result == "hi"
    (sent,) = pool.sent
    # sent with its reservation of what the run tracks: the prompt's estimate plus max_tokens
    assert sent.tool_name == "model:m1" and sent.charged is not None and sent.charged["output_tokens"] == 50
    record = cp.syscall_log[0]
    usd = (7 * 1.0 + 3 * 2.0) / 1_000_000
    assert record.charged == {"input_tokens": 7, "output_tokens": 3, "tokens": 10, "usd": usd}
    assert record == (await kernel.backend.journal.history(cp.pid))[0]  # the journaled record, not a copy of it
    assert await kernel.backend.budgets.read_scope("team") == {"tokens": (500, 10)}  # settled to the usage reported
    assert cp.capabilities["tokens"].current_usage == 10


async def test_a_model_call_that_failed_on_the_pool_is_refunded_and_raised_as_a_model_error() -> None:
    settings = Settings(llm=LLM)
    from castor.errors import RemoteToolError

    pool = PoolExecutor(settings, RemoteToolError("ProviderHTTPError", "HTTP 500", tool_name="model:m1"))
    kernel = Castor(executor=lambda tools: pool, budgets={"tokens": 1_000}, scopes=["team"])
    pool.backend = kernel.backend
    await kernel.backend.budgets.set_scope("team", {"tokens": 5_000})
    with pytest.raises(ModelCallError, match="on the llm pool: ProviderHTTPError: HTTP 500"):
        await kernel.run(lambda: complete(prompt="hello", max_tokens=100))
    assert pool.sent and await kernel.backend.budgets.read_scope("team") == {"tokens": (5_000, 0)}


async def test_a_model_of_the_agents_own_is_called_in_its_process_even_in_a_fleet() -> None:
    pool = PoolExecutor(Settings(llm=LLM), {"text": "never"})
    kernel = Castor(executor=lambda tools: pool)
    pool.backend = kernel.backend

    async def invoke(request: dict[str, Any]) -> dict[str, Any]:
        return {"text": "mine"}

    async def agent() -> str:
        return (await model_call({"messages": []}, model="framework", invoke=invoke))["text"]

    cp = await kernel.run(agent)
    assert cp.result == "mine" and pool.sent == []


async def test_the_pool_turns_a_429_into_a_pause_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = ModelCalls(Settings(llm=LLM))
    paused: list[float] = []

    class Limiter:
        async def acquire(self, key: Any, tokens: int, *, timeout: float | None = None) -> Any:
            from castor.llm.ratelimit import Reservation

            return Reservation(key, "r", tokens)

        async def settle(self, reservation: Any, tokens: int) -> None:
            pass

        async def pause(self, key: Any, seconds: float) -> None:
            paused.append(seconds)

    class Provider:
        def __init__(self) -> None:
            self.answers: list[Any] = [ProviderHTTPError("HTTP 429", 429, retry_after=0.01), {"text": "ok"}]

        async def complete(self, request: dict[str, Any]) -> Any:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    monkeypatch.setattr(calls, "_parts", lambda model: (Provider(), Limiter()))
    assert (await calls.complete("m1", {"messages": []}))["text"] == "ok"
    assert paused == [0.01]


async def test_a_stream_in_a_fleet_yields_the_pools_whole_answer_once() -> None:
    pool = PoolExecutor(Settings(llm=LLM), {"text": "all of it", "usage": {"input_tokens": 2, "output_tokens": 3}})
    kernel = Castor(executor=lambda tools: pool)
    pool.backend = kernel.backend

    async def agent() -> list[str]:
        return [chunk async for chunk in stream(prompt="hello")]

    cp = await kernel.run(agent)
    assert cp.result == ["all of it"] and len(pool.sent) == 1
    assert cp.syscall_log[0].charged == {"input_tokens": 2, "output_tokens": 3, "tokens": 5, "usd": 8e-06}


async def test_without_a_provider_in_the_config_the_kernels_own_provider_answers_in_its_process() -> None:
    pool = PoolExecutor(Settings(), {"text": "from the pool"})
    kernel = Castor(executor=lambda tools: pool, llm=Scripted(["from here"]))
    pool.backend = kernel.backend
    cp = await kernel.run(lambda: complete(prompt="hello"))
    assert cp.result.text == "from here" and pool.sent == []


def test_a_worker_takes_a_model_request_up_to_its_own_bound_and_a_tools_arguments_up_to_theirs() -> None:
    from castor.fleet.workers._guard import Refusal, parse_job

    from castor.fleet.wire import encode

    settings = Settings(llm={**LLM, "max_request_bytes": 200_000}, security={"max_argument_bytes": 65_536})
    conversation = {"request": {"messages": [{"role": "user", "content": "x" * 100_000}]}}
    job = parse_job(encode(ToolCall("run", 0, "model:m1", conversation), "", None), settings)
    assert job.tool_name == "model:m1"
    with pytest.raises(Refusal, match="above the limit of 65536"):
        parse_job(encode(ToolCall("run", 1, "search", {"q": "x" * 100_000}), "", None), settings)
    with pytest.raises(Refusal, match="above the limit of 200000"):
        too_long = {"request": {"messages": [{"role": "user", "content": "x" * 300_000}]}}
        parse_job(encode(ToolCall("run", 2, "model:m1", too_long), "", None), settings)


class _FlakyBudgets:
    """A budget store whose settle fails with ``errors`` in turn, then records what it was asked."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.settled: list[dict[str, float]] = []

    async def settle(self, run_id: str, step: int, amounts: dict[str, float]) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.settled.append(amounts)


def _settling(budgets: _FlakyBudgets) -> tuple[Any, ToolCall]:
    backend = type("Backend", (), {"budgets": budgets})()
    job = ToolCall("run-1", 0, "model:m1", {"request": {"messages": []}}, charged={"tokens": 100.0},
                   usage={"tokens": 50.0})  # the run's usage before the step
    return backend, job


async def test_a_settle_that_loses_redis_is_asked_again_and_the_answer_is_kept() -> None:
    from castor.errors import BackendUnavailable

    calls = ModelCalls(Settings(llm=LLM))
    budgets = _FlakyBudgets(BackendUnavailable("redis away"), BackendUnavailable("redis away"))
    backend, job = _settling(budgets)
    response = {"text": "ok", "usage": {"input_tokens": 3, "output_tokens": 4}}
    await calls.settle_through_outage(backend, job, response, outage=30.0)
    assert budgets.settled == [{"tokens": 7.0}]  # settled once Redis answered: what the call used
    assert job.charged["tokens"] == 7 and job.usage["tokens"] == 57


async def test_a_settle_that_fails_otherwise_keeps_the_reservation_as_the_charge() -> None:
    calls = ModelCalls(Settings(llm=LLM))
    budgets = _FlakyBudgets(RuntimeError("a script error"))
    backend, job = _settling(budgets)
    await calls.settle_through_outage(backend, job, {"text": "ok"}, outage=30.0)  # no exception: the answer stands
    assert budgets.settled == []
    assert job.charged == {"tokens": 100.0} and job.usage == {"tokens": 150.0}  # the reservation, as the ledger holds


async def test_a_settle_past_the_outage_deadline_keeps_the_reservation_as_the_charge() -> None:
    from castor.errors import BackendUnavailable

    calls = ModelCalls(Settings(llm=LLM))
    budgets = _FlakyBudgets(*[BackendUnavailable("redis away")] * 5)
    backend, job = _settling(budgets)
    await calls.settle_through_outage(backend, job, {"text": "ok"}, outage=0.1)
    assert budgets.settled == [] and job.charged == {"tokens": 100.0}
