"""CrewAI's tests need ``castor[crewai]``, which cannot share a venv with the dev extra (CrewAI pins openai<3,
the OpenAI Agents SDK needs openai>=3). Where CrewAI is not installed its module is not collected at all;
``.ci/run`` runs it (``pytest -m crewai``) in a venv of its own, so CI never counts it as skipped or passed
without running it. The contract's CrewAI cases (``test_contract.py``) carry the ``crewai`` marker, which
tests/conftest.py deselects where CrewAI is missing."""

import importlib.util

import pytest

collect_ignore = [] if importlib.util.find_spec("crewai") else [
    "test_crewai.py", "test_crewai_async.py", "test_crewai_castor_model.py", "test_crewai_crews.py",
]


@pytest.fixture
def crewai_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """CrewAI's offline variables for one test (``tests.frameworks.crewai_offline``)."""
    from tests.frameworks.crewai_offline import OFFLINE

    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
