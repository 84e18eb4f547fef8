"""The store goes away once a call has acted: its tool ran (or its task is out) and its record cannot be
journaled. The agent must not be told the call failed: an agent (or a framework) that goes past a call's
error would make the call again, and a claimed call's claim, released, would let the next drive run it again.
The run stops, resumable (``PREEMPTED``, reason ``store unavailable``), the caller gets an
``OutcomeUnknownError`` (a ``BackendUnavailable``), and its resume settles the step: in doubt for a claimed
call, never run a second time unasked."""

from __future__ import annotations

from typing import Any

import pytest

from castor import Castor, castor_tool
from castor.backends.memory import memory_backend
from castor.errors import BackendUnavailable, OutcomeUnknownError
from castor.lib import tool
from castor.seams import Backend

SENT: list[str] = []


@castor_tool(destructive=True)
async def send(to: str) -> str:
    """A destructive call: it may run once."""
    SENT.append(to)
    return f"sent to {to}"


async def note(text: str) -> str:
    """A plain call."""
    SENT.append(text)
    return f"noted {text}"


async def insistent() -> str:
    """Goes past a call's error and makes the call again: what many agents and frameworks do."""
    for _ in range(3):
        try:
            return str(await tool("send", to="ann"))
        except Exception:  # the point: an agent that catches everything
            continue
    return "gave up"


def _losing_the_record(backend: Backend, tool_name: str) -> list[int]:
    """The store refuses the first record of ``tool_name`` (Redis gone between the call and its record)."""
    append, refused = backend.journal.append, []

    async def away(run_id: str, step: int, record: Any) -> None:
        if record.tool_name == tool_name and not refused:
            refused.append(step)
            raise BackendUnavailable("Redis at redis://127.0.0.1:6399/0 is unreachable")
        await append(run_id, step, record)

    backend.journal.append = away  # type: ignore[method-assign]
    return refused


@pytest.fixture(autouse=True)
def _fresh() -> None:
    SENT.clear()


async def test_a_claimed_call_whose_record_is_lost_runs_once_and_its_resume_asks_a_human() -> None:
    backend = memory_backend()
    refused = _losing_the_record(backend, "send")
    kernel = Castor(tools=[send], store=backend)
    with pytest.raises(OutcomeUnknownError, match=r"'send' \(run .*, step 0\) ran, and its record cannot be "):
        await kernel.run(insistent, pid="lost-record", speculative=True)  # destructive calls run, claimed
    assert refused == [0] and SENT == ["ann"]  # the agent could not make the call again
    stored = await backend.runs.load("lost-record")
    assert stored is not None
    assert (stored.status, stored.preemption_reason) == ("PREEMPTED", "store unavailable")

    resumed = await kernel.run(insistent, checkpoint=stored, speculative=True)  # the store is back
    assert resumed.status == "SUSPENDED_FOR_HITL"  # its claim stayed: in doubt, for a human
    assert "in doubt" in (resumed.pending_reason or "")
    assert SENT == ["ann"]


async def test_a_plain_call_whose_record_is_lost_stops_the_run_rather_than_fail_the_call() -> None:
    backend = memory_backend()
    _losing_the_record(backend, "note")

    async def goes_past_errors() -> list[str]:
        seen = []
        for text in ("a", "b"):
            try:
                seen.append(str(await tool("note", text=text)))
            except Exception as error:
                seen.append(type(error).__name__)
        return seen

    kernel = Castor(tools=[note], store=backend)
    with pytest.raises(OutcomeUnknownError):
        await kernel.run(goes_past_errors, pid="plain")
    assert SENT == ["a"]  # the second call never went out on a run whose first one is unrecorded
    stored = await backend.runs.load("plain")
    assert stored is not None and stored.status == "PREEMPTED" and stored.error is None
    resumed = await kernel.run(goes_past_errors, checkpoint=stored)
    assert resumed.status == "COMPLETED" and resumed.result == ["noted a", "noted b"]
    assert SENT == ["a", "a", "b"]  # a plain tool is run again after a loss, as after a crash (README)


async def test_an_approved_call_whose_record_is_lost_is_not_run_again_on_resume() -> None:
    """``approve`` runs the decided call at once: its record lost, the approval says so (one clear error,
    no crash) and the run's resume finds the step in doubt, for a human, rather than run it again."""
    backend = memory_backend()
    kernel = Castor(tools=[send], store=backend)
    parked = await kernel.run(insistent, pid="approved")
    assert parked.status == "SUSPENDED_FOR_HITL" and SENT == []
    append = backend.journal.append
    refused = _losing_the_record(backend, "send")
    with pytest.raises(OutcomeUnknownError, match="ran, and its record cannot be journaled"):
        await kernel.approve("approved", by="ann")
    assert refused == [0] and SENT == ["ann"]
    backend.journal.append = append  # type: ignore[method-assign]  # the store is back
    stored = await backend.runs.load("approved")
    assert stored is not None
    resumed = await kernel.run(insistent, checkpoint=stored)
    assert resumed.status == "SUSPENDED_FOR_HITL" and "in doubt" in (resumed.pending_reason or "")
    assert SENT == ["ann"]


async def test_a_child_agents_call_whose_record_is_lost_stops_its_parent_too() -> None:
    """The child agent's call ran and its record was lost: the child stops, and so does the parent that
    joins it, even one that goes past a child's failure (it would spawn another child to do it again). The
    parent's resume drives the child again, whose step is in doubt, for a human."""
    from castor import AgentRegistry, castor_agent
    from castor.lib import join, spawn

    registry = AgentRegistry()

    @castor_agent("sender", registry=registry)
    async def sender() -> str:
        return str(await tool("send", to="bob"))

    async def parent() -> str:
        for _ in range(2):
            try:
                return str(await join(await spawn("sender")))
            except Exception:  # goes past a failed child, and tries again
                continue
        return "gave up"

    backend = memory_backend()
    _losing_the_record(backend, "send")
    kernel = Castor(tools=[send], store=backend, agent_registry=registry)
    with pytest.raises(OutcomeUnknownError):
        await kernel.run(parent, pid="parent", speculative=True)
    assert SENT == ["bob"]
    stored = await backend.runs.load("parent")
    assert stored is not None and (stored.status, stored.preemption_reason) == ("PREEMPTED", "store unavailable")
    resumed = await kernel.run(parent, checkpoint=stored, speculative=True)
    assert resumed.status == "SUSPENDED_FOR_HITL" and SENT == ["bob"]
