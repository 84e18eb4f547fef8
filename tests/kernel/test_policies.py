"""The interactive approval policy answers from a terminal."""

from __future__ import annotations

import io

from castor import AgentCheckpoint, interactive


def suspended() -> AgentCheckpoint:
    return AgentCheckpoint(
        pid="p", status="SUSPENDED_FOR_HITL", agent_function_name="a", capabilities={},
        pending_hitl={"tool_name": "delete_file", "arguments": {"path": "/tmp/x"}},
    )


async def test_interactive_choices() -> None:
    out = io.StringIO()
    assert await interactive(suspended(), stdin=io.StringIO("a\n"), stdout=out) == ("approve", None)
    assert "delete_file" in out.getvalue() and "/tmp/x" in out.getvalue()
    assert await interactive(suspended(), stdin=io.StringIO("maybe\nr\ntoo risky\n"), stdout=out) == (
        "reject", "too risky",
    )
    assert "Please answer" in out.getvalue()
    assert await interactive(suspended(), stdin=io.StringIO("m\nuse /tmp/y\n"), stdout=out) == (
        "modify", "use /tmp/y",
    )


async def test_interactive_without_input_raises() -> None:
    import pytest

    with pytest.raises(EOFError):
        await interactive(suspended(), stdin=io.StringIO(""), stdout=io.StringIO())
