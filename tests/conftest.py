"""Fixtures shared by every test package, and the ``fleet`` marker.

The Redis fixtures come from ``tests.redis_support``, which needs the ``redis`` package. Without it
(a venv with only the kernel's dependencies) the kernel, CLI and in-memory contract tests still
collect and run; a test that asks for Redis is skipped, saying why. Under ``CI=true`` a missing
``redis`` package is an error, as a missing Redis server is.

A test that starts processes (Celery workers, coordinators, CLI subprocesses, ``redis-server``) is
marked ``fleet``: ``pytest -m "not fleet"`` is the fast inner loop. A test that asks for one of the
fleet fixtures below is marked here; a test that starts processes itself says so with
``@pytest.mark.fleet`` (or a module's ``pytestmark``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest

# Fixtures that start worker or coordinator processes: whoever asks for one, even through another
# fixture, is a fleet test. ``fleet``: tests/celery/conftest.py and tests/fleet/conftest.py;
# ``amqp_fleet``: celery/test_amqp.py; ``unconfigured``: celery/test_worker_cli.py; ``executor_fleet``:
# contract/conftest.py (its ``executor`` fixture asks for it only for the Celery case, which its param marks).
FLEET_FIXTURES = frozenset({"fleet", "amqp_fleet", "unconfigured", "executor_fleet"})

try:
    from tests.redis_support import redis_prefix, redis_url
except ModuleNotFoundError as missing:
    if missing.name != "redis" or os.environ.get("CI") == "true":
        raise
    NO_REDIS = "the redis package is not installed (pip install -e '.[redis]' or '.[dev]')"

    @pytest.fixture(scope="session")
    def redis_url() -> str:
        """Skips the test: no ``redis`` package to talk to a server with."""
        pytest.skip(NO_REDIS)

    @pytest.fixture
    def redis_prefix(redis_url: str) -> Iterator[str]:
        """Never reached without ``redis``: ``redis_url`` skips first."""
        yield ""

    # Their modules import redis (or the workers, which do) at the top: without it they cannot be collected.
    collect_ignore = ["redis", "celery", "fleet", "test_settings.py", "test_secret.py", "test_limits.py"]

    def pytest_report_header() -> str:
        """Say in the header which tests were left out, and why."""
        return f"castor tests: {NO_REDIS}; not collected: {', '.join(collect_ignore)}"


__all__ = ["redis_prefix", "redis_url"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``fleet`` every test that uses a fixture starting processes; deselect the ``crewai`` tests where
    CrewAI is not installed (it cannot share the dev venv: .ci/run runs them in a venv of their own)."""
    for item in items:
        if FLEET_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.fleet)
    # The fault harness (minutes) first: under `-n 3 --dist worksteal` one process runs it while the others
    # take the rest, instead of it starting last and running alone.
    items.sort(key=lambda item: item.get_closest_marker("faults") is None)
    if importlib.util.find_spec("crewai") is None:
        kept = [item for item in items if item.get_closest_marker("crewai") is None]
        if len(kept) != len(items):
            config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("crewai")])
            items[:] = kept
