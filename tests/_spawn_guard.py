"""Keeps the ``fleet`` marker honest: ``python -m pytest -p tests._spawn_guard -m "not fleet"`` fails
any test that starts a process without being marked ``fleet`` (the fast loop must start none).

An audit hook sees every ``subprocess.Popen``, fork and ``posix_spawn`` of this process (not the
``spawn`` start method of ``multiprocessing``, which raises no audit event); while a test not marked
``fleet`` runs (its fixtures included), one is refused with an error naming the test. Opt-in: a hook
once added stays for the whole interpreter.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

_SPAWNS = frozenset({"subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn"})
_running: list[str] = []  # the node id of the running test not marked fleet, if one is


def _refuse(event: str, args: tuple[Any, ...]) -> None:
    if event in _SPAWNS and _running:
        raise RuntimeError(f"{_running[0]} starts a process ({event} {str(args)[:200]}) but is not marked fleet")


sys.addaudithook(_refuse)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Watch the test from its setup to its teardown."""
    if item.get_closest_marker("fleet") is None:
        _running.append(item.nodeid)
    try:
        return (yield)
    finally:
        _running.clear()
