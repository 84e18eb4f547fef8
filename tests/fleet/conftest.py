"""The fleet tests' fixture: a ``Fleet`` of real processes on a private key prefix and private queues."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.procs import Fleet


@pytest.fixture
def fleet(redis_url: str, tmp_path: Path) -> Iterator[Fleet]:
    """Processes are stopped and every key and queue of the fleet deleted after the test."""
    f = Fleet(redis_url, tmp_path)
    try:
        yield f
    finally:
        f.close()
