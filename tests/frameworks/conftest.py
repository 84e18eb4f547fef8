"""CrewAI's tests need ``castor[crewai]``, which cannot share a venv with the dev extra (CrewAI pins openai<3,
the OpenAI Agents SDK needs openai>=3). Where CrewAI is not installed its module is not collected at all;
``.ci/run`` runs it (``pytest -m crewai``) in a venv of its own, so CI never counts it as skipped or passed
without running it. The contract's CrewAI cases (``test_contract.py``) carry the ``crewai`` marker, which
tests/conftest.py deselects where CrewAI is missing."""

import contextlib
import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest

collect_ignore = [] if importlib.util.find_spec("crewai") else [
    "test_crewai.py", "test_crewai_async.py", "test_crewai_castor_model.py", "test_crewai_crews.py",
    "test_crewai_resume.py",
]


@pytest.fixture
def crewai_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """CrewAI's offline variables for one test (``tests.frameworks.crewai_offline``)."""
    from tests.frameworks.crewai_offline import OFFLINE

    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def whole_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A context manager: replays inside it run the whole loop (the test module's late-start module, its
    ``resume``, with ``STARTS_LATE`` off): what a late start's result is compared with."""

    @contextlib.contextmanager
    def off() -> Iterator[None]:
        with monkeypatch.context() as patched:
            patched.setattr(request.module.resume, "STARTS_LATE", False)
            yield

    yield off
