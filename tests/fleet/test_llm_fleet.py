"""Model calls in a fleet of real processes: the kernel's model calls run on a worker of the ``llm`` pool, which
holds the API key (the coordinators have none), calls the fake OpenAI-compatible server under the fleet's rate
limits, settles the token charge and journals the step; a takeover or a fork never calls the model again."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fleet.procs import Fleet, tool_spec
from tests.fleet.test_fencing import status
from tests.fleet.test_scenario import wait_for
from tests.llm.fake_openai import FakeOpenAI

pytestmark = pytest.mark.fleet

AGENTS = f"{__file__.rsplit('/', 1)[0]}/llm_agent.py"
KEY_ENV = "CASTOR_TEST_LLM_KEY"
KEY = "sk-test-worker-only"
TOOLS = ["--tool", tool_spec("ticket")]


def _configure(fleet: Fleet, server: FakeOpenAI, extra: str = "") -> None:
    """The fleet's [llm] section: the fake server as an OpenAI-compatible provider, the key's variable name."""
    fleet.config.write_text(fleet.config.read_text() + (
        f'\n[llm]\nprovider = "openai"\nmodel = "fake-model"\nbase_url = "{server.url}"\n'
        f'api_key_env = "{KEY_ENV}"\ntimeout = 20\n{extra}'
    ))
    fleet.env.pop(KEY_ENV, None)
    fleet.env["CASTOR_TEST_LLM_URL"] = server.url


def _llm_worker(fleet: Fleet, name: str = "worker-llm") -> None:
    """A worker of the llm pool: the only process with the API key in its environment."""
    plain = fleet.env
    fleet.env = {**plain, KEY_ENV: KEY}
    try:
        fleet.start(name, "worker", "--config", str(fleet.config), "--pool", "llm", "--pool-impl", "threads",
                    "--concurrency", "1", "--fast-start", "--loglevel", "INFO", ready=" ready.")
    finally:
        fleet.env = plain


def _settled(fleet: Fleet, pid: str, timeout: float = 60) -> str:
    wait_for(f"run {pid} to end", lambda: status(fleet, pid) in ("COMPLETED", "FAILED"), timeout)
    return status(fleet, pid)


def _stats(server: FakeOpenAI) -> dict[str, Any]:
    return httpx.get(server.url.removesuffix("/v1") + "/admin/stats").json()


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


@pytest.fixture
def slow_server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(latency=3.0).start()
    yield fake
    fake.stop()


def test_model_calls_run_on_the_llm_pool_with_its_key_and_are_charged_what_they_used(
    fleet: Fleet, server: FakeOpenAI
) -> None:
    _configure(fleet, server)
    _llm_worker(fleet)
    fleet.worker("web")
    fleet.coordinator("co-a")
    store = f"{fleet.url}?prefix={fleet.prefix}"
    fleet.cli("budget", "set", "team", "tokens=5000", "--redis", store)
    pid = fleet.cli("submit", f"{AGENTS}:model_job", *TOOLS, "--budget", "tokens=200", "--scope", "team").stdout.strip()
    assert _settled(fleet, pid) == "COMPLETED", fleet.log("co-a")[-3000:] + fleet.log("worker-llm")[-3000:]
    stats = _stats(server)
    assert stats["requests"] == 2
    assert stats["authorization"] == {f"Bearer {KEY}": 2}  # from the worker: the coordinator has no key
    log = fleet.cli_json("inspect", pid)["syscall_log"]
    assert [r["request"]["tool_name"] for r in log] == ["ticket", "model:fake-model", "model:fake-model"]
    ticket = log[0]["response"]
    # the fake server's usage: len(content) // 4 + 4 prompt tokens, min(max_tokens, 16) completion tokens
    first_in = len(f"hello {ticket}") // 4 + 4
    assert log[1]["charged"] == {"input_tokens": first_in, "output_tokens": 8, "tokens": first_in + 8}
    assert log[2]["charged"] == {"input_tokens": 5, "output_tokens": 5, "tokens": 10}
    assert log[1]["response"]["usage"] == {"input_tokens": first_in, "output_tokens": 8}
    assert fleet.cli_json("inspect", pid)["result"]["texts"] == [" ".join(["ok"] * 8), " ".join(["ok"] * 5)]
    # the shared scope was charged what the server reported (the reservations settled by the worker)
    shown = fleet.cli_json("budget", "show", "team", "--redis", store)["resources"]["tokens"]
    assert shown["used"] == first_in + 8 + 10

    # a fork replayed on another process (the CLI's kernel, Celery executor): no model call, the same usage
    fleet.cli("fork", pid, "--at-step", "3", "--executor", "celery", "--config", str(fleet.config))
    assert _stats(server)["requests"] == 2
    fork = fleet.cli_json("inspect", f"{pid}::fork-3")
    assert fork["status"] == "COMPLETED" and fork["result"] == fleet.cli_json("inspect", pid)["result"]
    assert [r["charged"] for r in fork["syscall_log"]] == [r["charged"] for r in log]


def test_a_coordinator_killed_mid_model_call_hands_it_over_and_the_model_is_called_once(
    fleet: Fleet, slow_server: FakeOpenAI
) -> None:
    _configure(fleet, slow_server)
    fleet.config.write_text(fleet.config.read_text().replace("[workers]\n", "[workers]\nheartbeat = 2.0\n"))
    _llm_worker(fleet)
    fleet.worker("web")
    fleet.coordinator("co-a", lease=1.0)
    pid = fleet.cli("submit", f"{AGENTS}:one_call", "--budget", "tokens=100").stdout.strip()
    wait_for("the model call to reach the server", lambda: _stats(slow_server)["requests"] == 1, 30)
    fleet.stop("co-a", signal.SIGKILL)
    fleet.coordinator("co-b", lease=1.0)
    assert _settled(fleet, pid) == "COMPLETED", fleet.log("co-b")[-3000:] + fleet.log("worker-llm")[-3000:]
    assert _stats(slow_server)["requests"] == 1  # the takeover's send was answered by the running call
    record = fleet.cli_json("inspect", pid)["syscall_log"][0]
    assert record["charged"] == {"input_tokens": 4, "output_tokens": 4, "tokens": 8}


def test_a_framework_model_call_in_flight_at_a_takeover_is_made_once_more_and_both_calls_charged(
    fleet: Fleet, quick_server: FakeOpenAI
) -> None:
    _configure(fleet, quick_server)
    fleet.worker("web")
    fleet.coordinator("co-a", lease=1.0)
    store = f"{fleet.url}?prefix={fleet.prefix}"
    fleet.cli("budget", "set", "team", "tokens=5000", "--redis", store)
    pid = fleet.cli("submit", f"{AGENTS}:framework_model_job", *TOOLS, "--budget", "tokens=500",
                    "--scope", "team").stdout.strip()
    wait_for("the model call to reach the server", lambda: _stats(quick_server)["requests"] == 1, 30)
    fleet.stop("co-a", signal.SIGKILL)
    fleet.coordinator("co-b", lease=1.0)
    # [llm] in_doubt = "retry" (the default): the call whose process was lost is made once more, only once
    assert _settled(fleet, pid) == "COMPLETED", fleet.log("co-b")[-3000:]
    assert _stats(quick_server)["requests"] == 2
    run = fleet.cli_json("inspect", pid)
    (first,) = [f for f in run["failures"] if f["error_type"] == "InDoubtError" and f["tool_name"] == "model:framework"]
    second = run["syscall_log"][1]["charged"]
    assert first["charged"]["tokens"] > 0 and second["tokens"] > 0
    both = first["charged"]["tokens"] + second["tokens"]  # the first call's reservation and the second's usage
    assert run["capabilities"]["tokens"]["current_usage"] == both
    assert fleet.cli_json("budget", "show", "team", "--redis", store)["resources"]["tokens"]["used"] == both


def test_a_429_pauses_the_key_for_every_worker_of_the_pool(fleet: Fleet, server: FakeOpenAI) -> None:
    _configure(fleet, server)
    _llm_worker(fleet, "worker-llm-a")
    _llm_worker(fleet, "worker-llm-b")
    fleet.coordinator("co-a")
    httpx.post(server.url.removesuffix("/v1") + "/admin/throttle", json={"count": 1, "retry_after": 3})
    first = fleet.cli("submit", f"{AGENTS}:one_call", "--budget", "tokens=100").stdout.strip()
    wait_for("the 429", lambda: _stats(server)["throttled"] == 1, 30)
    second = fleet.cli("submit", f"{AGENTS}:one_call", "--budget", "tokens=100").stdout.strip()
    assert _settled(fleet, first) == "COMPLETED"
    assert _settled(fleet, second) == "COMPLETED"
    stats = _stats(server)
    assert stats["requests"] == 2
    (refused_at, refused), *served = stats["arrivals"]
    assert refused and len(served) == 2
    # neither worker called the paused key before the retry-after was over (the window's skew aside)
    assert all(at >= refused_at + 2.9 for at, _ in served), (refused_at, served)
    took = [name for name in ("worker-llm-a", "worker-llm-b") if "castor.tool.model:fake-model" in fleet.log(name)]
    assert took == ["worker-llm-a", "worker-llm-b"], "the two calls ran on two worker processes"


@pytest.fixture
def quick_server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(latency=1.5).start()
    yield fake
    fake.stop()


async def test_an_llm_worker_killed_mid_call_leaves_it_in_doubt_and_it_is_made_once_more_on_another(
    fleet: Fleet, quick_server: FakeOpenAI
) -> None:
    import asyncio

    from castor import Castor
    from castor.executors.celery import CeleryExecutor, fleet_options
    from castor.lib import complete
    from castor.settings import load_settings

    _configure(fleet, quick_server)
    # a short deadline (the model's 3 s and a reply grace of 1 s) and heartbeat: the lost call is seen soon
    fleet.config.write_text(fleet.config.read_text().replace("timeout = 20\n", "timeout = 3\n")
                            .replace("[workers]\n", "[workers]\nheartbeat = 1.0\n"))
    _llm_worker(fleet, "worker-llm-a")
    settings = load_settings(fleet.config)
    kernel = Castor(**fleet_options(settings, executor=CeleryExecutor._builder(settings, reply_grace=1.0)),
                    scopes=["team"])
    try:
        await kernel.backend.budgets.set_scope("team", {"tokens": 5_000})

        async def agent() -> str:
            return (await complete(prompt="hi", max_tokens=4)).text

        running = asyncio.ensure_future(kernel.run(agent, pid=f"lost-llm-{fleet.prefix}"))
        reached = lambda: _stats(quick_server)["requests"] == 1  # noqa: E731
        await asyncio.to_thread(wait_for, "the call to reach the server", reached, 30)
        fleet.stop("worker-llm-a", signal.SIGKILL)
        _llm_worker(fleet, "worker-llm-b")
        cp = await asyncio.wait_for(running, 40)
        assert cp.status == "COMPLETED", cp.error
        assert _stats(quick_server)["requests"] == 2  # exactly one more provider call
        (first,) = [f for f in cp.failures if f.error_type == "InDoubtError" and f.charged]
        second = cp.syscall_log[0].charged
        assert second == {"input_tokens": 4, "output_tokens": 4, "tokens": 8}
        both = first.charged["tokens"] + second["tokens"]
        assert await kernel.backend.budgets.read_scope("team") == {"tokens": (5_000, both)}
        assert "model:fake-model" in fleet.log("worker-llm-b")
    finally:
        await kernel.executor.close()
        await kernel.backend.close()
