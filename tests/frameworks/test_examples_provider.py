"""The framework examples with a real provider (``CASTOR_EXAMPLE_MODEL``): the agent's model is Castor's, so
``castor run --config`` answers it with the config's ``[llm]`` provider (here the fake OpenAI-compatible
server), with the key in that process's environment; ``castor approve`` finishes the run replaying the
model steps before the approval, so the server sees one request per model step."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from castor.cli import main
from tests.llm.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
KEY_ENV = "CASTOR_TEST_EXAMPLE_KEY"
KEY = "sk-example-run-only"
EXAMPLES = {"langgraph_agent": "langgraph", "pydantic_ai_agent": "pydantic_ai",
            "openai_agents_agent": "agents", "smolagents_agent": "smolagents",
            "crewai_agent": "crewai"}  # not in the dev extra: marked crewai, run by .ci/run in a venv of its own
TOOL_CALLS = [{"tool_calls": [{"name": "search", "arguments": {"query": "old logs"}}]},
              {"tool_calls": [{"name": "delete_file", "arguments": {"path": "/tmp/old.log"}}]},
              {"content": "All clean."}]
REPLIES = {
    **{name: TOOL_CALLS for name in EXAMPLES},
    "smolagents_agent": [
        *TOOL_CALLS[:2], {"tool_calls": [{"name": "final_answer", "arguments": {"answer": "All clean."}}]}],
    "crewai_agent": [  # CrewAI's text (ReAct) mode
        {"content": 'Thought: look\nAction: search\nAction Input: {"query": "old logs"}'},
        {"content": 'Thought: delete\nAction: delete_file\nAction Input: {"path": "/tmp/old.log"}'},
        {"content": "Thought: I now know the final answer\nFinal Answer: All clean."},
    ],
}
NAMES = [pytest.param(n, marks=[pytest.mark.crewai, pytest.mark.filterwarnings("ignore::DeprecationWarning")])
         if n == "crewai_agent" else n for n in sorted(EXAMPLES)]


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


@pytest.mark.parametrize("name", NAMES)
def test_the_examples_real_model_is_answered_by_the_configs_provider(
    name: str, server: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip(EXAMPLES[name])
    # a copy: the example's module is built afresh with CASTOR_EXAMPLE_MODEL set (modules load once per file)
    path = shutil.copy(ROOT / "examples" / "frameworks" / f"{name}.py", tmp_path / f"{name}.py")
    config = tmp_path / "castor.toml"
    config.write_text(f'[llm]\nprovider = "openai"\nmodel = "fake-model"\nbase_url = "{server.url}"\n'
                      f'api_key_env = "{KEY_ENV}"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CASTOR_STORE", raising=False)
    monkeypatch.setenv("CASTOR_EXAMPLE_MODEL", "fake-model")
    monkeypatch.setenv(KEY_ENV, KEY)
    admin = server.url.removesuffix("/v1")
    httpx.post(f"{admin}/admin/script", json={"replies": REPLIES[name]})

    # the run in a SQLite file of the test's (a config names a fleet's Redis store unless a store is given)
    store = ["--config", str(config), "--db", str(tmp_path / "castor.db")]
    assert main(["run", f"{path}:main", "--tool", f"{path}:search,delete_file", "--destructive", "delete_file",
                 "--pid", "job", *store]) == 0, capsys.readouterr()
    assert "Status: SUSPENDED_FOR_HITL" in capsys.readouterr().out
    assert httpx.get(f"{admin}/admin/stats").json()["requests"] == 2
    assert main(["approve", "job", *store]) == 0, capsys.readouterr()
    capsys.readouterr()
    stats = httpx.get(f"{admin}/admin/stats").json()
    assert stats["requests"] == 3 and stats["authorization"] == {f"Bearer {KEY}": 3}
    assert main(["inspect", "job", "--json", *store]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["status"] == "COMPLETED" and run["result"] == "All clean."
    assert [r["request"]["tool_name"] for r in run["syscall_log"]] == [
        "model:fake-model", "search", "model:fake-model", "delete_file", "model:fake-model"]
