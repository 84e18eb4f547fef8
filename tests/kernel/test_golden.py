"""Golden journals: a recorded run, kept as JSON, must replay with no tool executed, and running the
agent again must journal the same steps. A change to the record format or the syscall path that would
break resuming runs written by an earlier version fails here first.

Regenerate after an intended format change with ``CASTOR_REGEN_GOLDEN=1 pytest tests/kernel/test_golden.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from castor import AgentCheckpoint, Castor, auto_approve
from castor.lib import parallel, tool

from .conftest import CALLS, cleanup_agent, delete_file, search

GOLDEN = Path(__file__).parent.parent / "golden"
VOLATILE = {"finished_at", "created_at", "updated_at", "decided_by"}  # decided_by: the OS user


def stable(value: Any) -> Any:
    """The journal without timestamps or pids' random part."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


async def fan_out() -> object:
    first = await parallel(("search", {"query": "a"}), ("search", {"query": "b"}))
    gone = await tool("delete_file", path="/tmp/" + first[1][0][-1])
    return [first, gone, await tool("search", query=3)]


CASES = {
    "cleanup_approved": (cleanup_agent, {"on_hitl": auto_approve}),
    "fan_out_speculative": (fan_out, {"speculative": True}),
}


async def record(name: str) -> AgentCheckpoint:
    agent, options = CASES[name]
    kernel = Castor(tools=[search, delete_file], destructive=["delete_file"], budgets={"api": 10})
    if "on_hitl" in options:
        return await kernel.run_until_complete(agent, pid=f"golden-{name}", **options)
    return await kernel.run(agent, pid=f"golden-{name}", **options)


@pytest.mark.parametrize("name", sorted(CASES))
async def test_golden_journal(name: str) -> None:
    path = GOLDEN / f"{name}.json"
    fresh = await record(name)
    if os.environ.get("CASTOR_REGEN_GOLDEN"):
        path.write_text(json.dumps(json.loads(fresh.model_dump_json()), indent=2) + "\n")
    golden = AgentCheckpoint.model_validate_json(path.read_text())
    assert stable(json.loads(fresh.model_dump_json())) == stable(json.loads(golden.model_dump_json()))

    CALLS.clear()
    agent, _ = CASES[name]
    kernel = Castor(tools=[search, delete_file], destructive=["delete_file"])
    replayed = await kernel.run(agent, checkpoint=golden)
    assert CALLS == {} and replayed.status == "COMPLETED"
    assert replayed.result == golden.result
