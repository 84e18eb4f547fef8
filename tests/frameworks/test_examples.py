"""The framework examples run offline as the README shows, and a run started by one ``castor`` process is
approved and finished by another over SQLite, the scripted model called once per model step in all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from castor import Castor, auto_approve
from castor._imports import load_file

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "langgraph_agent": "langgraph",
    "pydantic_ai_agent": "pydantic_ai",
    "openai_agents_agent": "agents",
    "smolagents_agent": "smolagents",
    "crewai_agent": "crewai",  # not in the dev extra: marked crewai, run by .ci/run in a venv of its own
}


def example(name: str) -> Path:
    pytest.importorskip(EXAMPLES[name])
    return ROOT / "examples" / "frameworks" / f"{name}.py"


# CrewAI's own code reads its deprecated fields when an Agent is built (the warnings are errors here).
IN_PROCESS = [pytest.param(n, marks=[pytest.mark.crewai, pytest.mark.filterwarnings("ignore::DeprecationWarning")])
              if n == "crewai_agent" else n for n in sorted(EXAMPLES)]


@pytest.mark.parametrize("name", IN_PROCESS)
async def test_the_example_runs_offline_in_process(name: str) -> None:
    module = load_file(example(name))
    kernel = Castor(tools=[module.search, module.delete_file], destructive=["delete_file"])
    cp = await kernel.run_until_complete(module.main, on_hitl=auto_approve)
    assert cp.status == "COMPLETED" and cp.result == "Deleted the old log file."
    assert [r.tool_name.split(":")[0] for r in cp.syscall_log] == ["model", "search", "model", "delete_file", "model"]


def castor_cli(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "castor", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# (example, entry point): CrewAI's also through its native async path (``amain``: ``akickoff``).
ENTRIES = [pytest.param(n, e, marks=pytest.mark.crewai, id=f"{n}:{e}") if n == "crewai_agent"
           else pytest.param(n, e, id=n) for n in sorted(EXAMPLES) for e in ("main", "amain")
           if e == "main" or n == "crewai_agent"]


@pytest.mark.fleet
@pytest.mark.parametrize(("name", "entry"), ENTRIES)
def test_a_new_process_approves_and_finishes_the_run_without_asking_the_model_again(
    name: str, entry: str, tmp_path: Path
) -> None:
    path = example(name).relative_to(ROOT)
    calls = tmp_path / "model-calls"
    env = {**os.environ, "CASTOR_EXAMPLE_MODEL_LOG": str(calls)}
    env.pop("CASTOR_EXAMPLE_MODEL", None)
    db = str(tmp_path / "castor.db")
    started = castor_cli("--db", db, "run", f"{path}:{entry}", "--tool", f"{path}:search,delete_file",
                         "--destructive", "delete_file", "--pid", "ex-1", env=env)
    assert "Status: SUSPENDED_FOR_HITL" in started and "step 3: delete_file" in started
    assert len(calls.read_text().splitlines()) == 2
    finished = castor_cli("--db", db, "approve", "ex-1", env=env)
    assert "Status: COMPLETED" in finished and "Result: Deleted the old log file." in finished
    assert len(calls.read_text().splitlines()) == 3  # one call per model step over both processes
