"""CrewAI offline in the tests: the variables it reads at import and at run time, set for its import only
(``offline()``) and for each CrewAI test (the ``crewai_offline`` fixture of this folder's conftest).
Never left behind: ``OTEL_SDK_DISABLED`` would turn off the tracing tests' SDK in the same session."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

OFFLINE = {
    "CREWAI_DISABLE_TELEMETRY": "true", "OTEL_SDK_DISABLED": "true", "CREWAI_TRACING_ENABLED": "false",
    "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "sk-castor-tests-offline"),
}


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """``OFFLINE`` in the environment while the block runs (CrewAI's import), then as it was."""
    before = {name: os.environ.get(name) for name in OFFLINE}
    os.environ.update(OFFLINE)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
