"""A framework agent in a fleet of real processes, its model the Castor-backed one: the coordinator holds no API
key and calls no model; every model step of the LangGraph agent runs on the ``llm`` pool's worker (the only
process with the key), which calls the fake OpenAI-compatible server once per step over the run's whole life."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fleet.procs import Fleet, tool_spec
from tests.fleet.test_fencing import status
from tests.fleet.test_llm_fleet import KEY, _configure, _llm_worker, _settled, _stats
from tests.fleet.test_scenario import wait_for
from tests.llm.fake_openai import FakeOpenAI

pytestmark = pytest.mark.fleet

AGENT = f"{__file__.rsplit('/', 1)[0]}/llm_framework_agent.py:main"


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


def _requests(server: FakeOpenAI) -> list[dict[str, Any]]:
    return list(httpx.get(server.url.removesuffix("/v1") + "/admin/requests").json())


def test_a_langgraph_agents_model_calls_run_on_the_llm_pool_once_per_step(fleet: Fleet, server: FakeOpenAI) -> None:
    pytest.importorskip("langgraph")
    _configure(fleet, server)
    httpx.post(server.url.removesuffix("/v1") + "/admin/script", json={"replies": [
        {"tool_calls": [{"name": "fetch", "arguments": {"tag": "logs"}}]},
        {"tool_calls": [{"name": "remove", "arguments": {"tag": "old-logs"}}]},
        {"content": "Removed the old logs."},
    ]})
    # both tools on the web pool: one tool worker fewer to start
    config = fleet.config.read_text()
    fleet.config.write_text(config.replace('web = ["ticket", "fetch", "pid_of"]', 'web = ["fetch", "remove"]')
                            .replace('fs = ["store", "remove", "slow_write"]', 'fs = ["store", "slow_write"]'))
    assert fleet.config.read_text() != config
    _llm_worker(fleet)
    fleet.worker("web")
    fleet.coordinator("co-a")
    pid = fleet.cli("submit", AGENT, "--tool", tool_spec("fetch"), "--tool", tool_spec("remove"),
                    "--destructive", "remove", "--budget", "tokens=5000").stdout.strip()
    wait_for("the run to park", lambda: status(fleet, pid) in ("SUSPENDED_FOR_HITL", "FAILED"), 60)
    assert status(fleet, pid) == "SUSPENDED_FOR_HITL", fleet.log("co-a")[-3000:] + fleet.log("worker-llm")[-3000:]
    assert _stats(server)["requests"] == 2
    fleet.cli("approve", pid)
    assert _settled(fleet, pid) == "COMPLETED", fleet.log("co-a")[-3000:] + fleet.log("worker-llm")[-3000:]
    stats = _stats(server)
    assert stats["requests"] == 3  # one per model step: the resume replayed steps 0 and 2 from the journal
    assert stats["authorization"] == {f"Bearer {KEY}": 3}  # the llm worker's key: the coordinator has none
    assert "castor.tool.model:fake-model" in fleet.log("worker-llm")
    run = fleet.cli_json("inspect", pid)
    assert run["result"] == "Removed the old logs."
    log = run["syscall_log"]
    assert [r["request"]["tool_name"] for r in log] == [
        "model:fake-model", "fetch", "model:fake-model", "remove", "model:fake-model"]
    assert fleet.count("old-logs") == 1  # the web pool's worker removed it once, after the approval
    # the framework's conversation went to the server in the chat API's form: the tool result as a tool message
    third = _requests(server)[2]["messages"]
    assert third[-2]["tool_calls"][0]["function"] == {"name": "remove", "arguments": '{"tag": "old-logs"}'}
    assert third[-1] == {"role": "tool", "tool_call_id": "call_2_0", "content": "removed old-logs"}
    # each step charged the tokens the server reported
    for record, body in zip(log[::2], _requests(server), strict=True):
        used = record["response"]["usage"]
        assert record["charged"]["tokens"] == used["input_tokens"] + used["output_tokens"] > 0
        assert used["output_tokens"] == min(body["max_tokens"], 16)
