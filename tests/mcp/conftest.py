"""The gateway tests need the MCP SDK (the ``mcp`` extra, part of ``dev``, so CI runs them)."""

from __future__ import annotations

import pytest

pytest.importorskip("mcp", reason="the MCP gateway tests need the mcp extra: pip install -e '.[mcp]'")
