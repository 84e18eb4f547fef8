"""Streams of the fleet's ``llm`` pool, on real processes: the worker forwards each chunk as the provider
sends it, so the agent reads the first chunk while the provider still holds the rest; a stream cut short is
charged the tokens received and its partial text is visible in ``castor inspect``."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from castor.llm import estimate_prompt, estimate_tokens
from tests.fleet.procs import Fleet
from tests.fleet.test_llm_fleet import AGENTS, _configure, _llm_worker, _settled, _stats
from tests.llm.fake_openai import FakeOpenAI

pytestmark = pytest.mark.fleet


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


def _gate(server: FakeOpenAI, **options: object) -> None:
    httpx.post(server.url.removesuffix("/v1") + "/admin/gate", json=options)


def test_a_stream_on_the_llm_pool_reaches_the_agent_chunk_by_chunk_and_one_cut_short_is_charged_what_it_got(
    fleet: Fleet, server: FakeOpenAI
) -> None:
    _configure(fleet, server)
    _llm_worker(fleet)
    fleet.coordinator("co-a")
    # The server sends one chunk, then holds the other five until the agent, holding that chunk, releases them.
    _gate(server, after=1, timeout=8.0)
    pid = fleet.cli("submit", f"{AGENTS}:streamed_job", "--budget", "tokens=200").stdout.strip()
    assert _settled(fleet, pid) == "COMPLETED", fleet.log("co-a")[-3000:] + fleet.log("worker-llm")[-3000:]
    assert _stats(server)["gate"] == {"released": True, "sent": 6}  # released by the agent, not by the timeout
    run = fleet.cli_json("inspect", pid)
    assert run["result"] == ["ok", " ok", " ok", " ok", " ok", " ok"]
    (record,) = run["syscall_log"]
    assert record["response"]["text"] == "ok ok ok ok ok ok"
    assert record["charged"] == {"input_tokens": 5, "output_tokens": 6, "tokens": 11}
    assert fleet.redis.keys(f"{fleet.prefix}:*chunks*") == []  # the chunk stream is gone once read

    # On the same fleet (one start-up for both): a stream cut short.
    _gate(server, after=1, timeout=8.0, cut=True)  # the provider's connection breaks after the first chunk
    store = f"{fleet.url}?prefix={fleet.prefix}"
    fleet.cli("budget", "set", "team", "tokens=5000", "--redis", store)
    pid = fleet.cli("submit", f"{AGENTS}:streamed_job", "--budget", "tokens=200", "--scope", "team").stdout.strip()
    assert _settled(fleet, pid) == "FAILED", fleet.log("co-a")[-3000:]
    assert _stats(server)["gate"]["released"] is True
    run = fleet.cli_json("inspect", pid)
    assert run["syscall_log"] == [] and run["partial_work"] == "ok"
    charged = [f["charged"] for f in run["failures"] if f["charged"]]
    # the prompt and the text received, counted offline (castor.llm.estimate_prompt / estimate_tokens)
    prompt = estimate_prompt({"messages": [{"role": "user", "content": "tell me"}], "max_tokens": 6})
    got = estimate_tokens("ok")
    assert charged == [{"input_tokens": prompt, "output_tokens": got, "tokens": prompt + got}]
    assert run["capabilities"]["tokens"]["current_usage"] == prompt + got
    assert fleet.cli_json("budget", "show", "team", "--redis", store)["resources"]["tokens"]["used"] == prompt + got
