"""The gateway tests need the MCP SDK (the ``mcp`` extra, part of ``dev``, so CI runs them). Fixtures of the
in-process gateway tests: a SQLite store, the file the destructive test tool appends to, and a second backend
on the store standing in for ``castor approve`` in another process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from castor.backends import open_backend
from castor.seams import Backend

pytest.importorskip("mcp", reason="the MCP gateway tests need the mcp extra: pip install -e '.[mcp]'")


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "appended.log"
    monkeypatch.setenv("MCP_TEST_LOG", str(path))
    return path


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture
async def operator(db: str) -> AsyncIterator[Backend]:
    backend = open_backend(db)
    yield backend
    await backend.close()
