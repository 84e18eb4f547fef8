"""A framework agent in the fleet: one coordinator drives it to its destructive call and parks it; another
coordinator (the first one stopped) finishes it after the approval, replaying the model steps from the
journal in Redis. The scripted model is called once per model step over both coordinators."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fleet.procs import ROOT, Fleet
from tests.fleet.test_fencing import status
from tests.fleet.test_scenario import wait_for

EXAMPLES = {
    "langgraph_agent": "langgraph", "pydantic_ai_agent": "pydantic_ai", "openai_agents_agent": "agents",
    "smolagents_agent": "smolagents", "crewai_agent": "crewai",  # crewai: not in dev, skipped in CI
}


@pytest.mark.fleet
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_another_coordinator_finishes_a_parked_framework_agent(fleet: Fleet, tmp_path: Path, name: str) -> None:
    pytest.importorskip(EXAMPLES[name])
    path = ROOT / "examples" / "frameworks" / f"{name}.py"
    calls = tmp_path / "model-calls"
    fleet.env["CASTOR_EXAMPLE_MODEL_LOG"] = str(calls)
    fleet.env.pop("CASTOR_EXAMPLE_MODEL", None)
    fleet.coordinator("co-a", executor="local", lease=1.0)
    pid = fleet.cli("submit", f"{path}:main", "--tool", f"{path}:search,delete_file",
                    "--destructive", "delete_file").stdout.strip()
    wait_for("the run to park", lambda: status(fleet, pid) == "SUSPENDED_FOR_HITL", 60)
    assert len(calls.read_text().splitlines()) == 2
    fleet.stop("co-a")
    fleet.coordinator("co-b", executor="local", lease=1.0)
    fleet.cli("approve", pid)
    wait_for("the run to finish on co-b", lambda: status(fleet, pid) in ("COMPLETED", "FAILED"), 60)
    run = fleet.cli_json("inspect", pid)
    assert run["status"] == "COMPLETED", fleet.log("co-b")[-3000:]
    assert run["result"] == "Deleted the old log file."
    assert len(calls.read_text().splitlines()) == 3  # co-b replayed steps 0 and 2 from the journal
