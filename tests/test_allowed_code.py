"""``[coordinator] agents``: what a coordinator imports of the code a run names (the fleet test:
``tests/fleet/test_cli.py::test_a_coordinator_with_an_agent_list_imports_nothing_else``)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from castor.fleet.scheduler._allowed import AllowedCode

from castor.checkpoint import RunSpec
from castor.cli._fleet_views import allowed_code
from castor.errors import ConfigError
from castor.settings import Settings


def settings(agents: list[str], tools: list[str]) -> Settings:
    return Settings(coordinator={"agents": agents}, tools={"import": tools})


def test_no_list_allows_anything_and_the_coordinator_says_so(caplog: pytest.LogCaptureFixture) -> None:
    assert AllowedCode.of(Settings()) is None
    with caplog.at_level(logging.WARNING, "castor.coordinator"):
        assert allowed_code(Settings()) is None
    assert "lists no [coordinator] agents" in caplog.text and "whatever agent and tools a run names" in caplog.text
    assert allowed_code(None) is None  # no config at all: nothing to list them in


def test_listed_agents_and_tools_pass_and_nothing_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the config's relative paths are the coordinator's working directory's
    allowed = AllowedCode.of(settings(["agents.py:triage", "jobs.py", "myapp.flows:run"], ["tools.py:search,rm"]))
    assert allowed is not None
    here = tmp_path.resolve()
    ok = RunSpec(agent=f"{here}/agents.py:triage", tools=[f"{here}/tools.py:search", f"{here}/tools.py:rm"])
    allowed.check(ok)
    allowed.check(RunSpec(agent=f"{here}/jobs.py:anything"))  # a file alone: each of its functions
    allowed.check(RunSpec(agent="myapp.flows:run"))
    refused = {
        "os:system": "agent 'os:system' is not among [coordinator] agents",
        f"{here}/agents.py:other": "is not among [coordinator] agents",
        f"{here}/elsewhere/agents.py:triage": "is not among [coordinator] agents",
        "myapp.flows:stop": "is not among [coordinator] agents",
    }
    for agent, message in refused.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            allowed.check(RunSpec(agent=agent))
    with pytest.raises(ConfigError, match=r"tool '.*tools.py:cat' is not among \[tools\] import"):
        allowed.check(RunSpec(agent=f"{here}/agents.py:triage", tools=[f"{here}/tools.py:cat"]))


def test_a_malformed_entry_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match=re.escape("bad import spec 'agents.py:1x'")):
        AllowedCode.of(settings(["agents.py:1x"], []))


def test_castor_agents_in_the_environment_lists_them_separated_by_spaces() -> None:
    from castor.settings import load_settings

    listed = load_settings(None, env={"CASTOR_AGENTS": " examples/fleet_agent.py  myapp.flows:run,stop "})
    assert listed.coordinator.agents == ("examples/fleet_agent.py", "myapp.flows:run,stop")
    assert load_settings(None, env={"CASTOR_AGENTS": "  "}).coordinator.agents == ()
