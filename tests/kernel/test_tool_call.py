"""One value for a tool call: the kernel's ``Syscall`` is a ``ToolCall``, the wire encodes and decodes
exactly it (signed over every field), and ``ToolCall.record`` is the one builder of a step's record."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from castor.fleet.wire import Job, Malformed, decode, encode, verify
from castor.kernel.context import Syscall
from castor.seams import Call, PendingApproval, ToolCall

SECRET = "s" * 32


def a_call() -> ToolCall:
    return ToolCall(
        "run-1", 63, "rm", {"path": "/tmp/x", "n": "3"}, attempt=1, checked={"path": "/tmp/x", "n": 3},
        decided_by="ann", was_hitl=True, charged={"api": 2.0}, usage={"api": 64.0},
    )


def test_a_syscall_starts_as_a_tool_call_with_nothing_decided() -> None:
    ctx: Any = object()
    made = Syscall("run-1", 3, "rm", {"path": "/"}, ctx)
    plain = ToolCall("run-1", 3, "rm", {"path": "/"})
    # Its __init__ is written out for speed: it must set every field of the value, to its default.
    for field in dataclasses.fields(ToolCall):
        assert getattr(made, field.name) == getattr(plain, field.name), field.name
    assert (made.ctx, made.spec) == (ctx, None)
    assert isinstance(made, ToolCall) and Call is ToolCall


def test_a_pending_approval_is_the_call_and_when_it_was_asked() -> None:
    pending = PendingApproval("r", 2, "rm", {"p": 1}, 10.0, None, "in doubt", attempt=1)
    assert isinstance(pending, ToolCall)
    assert (pending.tool_name, pending.attempt, pending.created_at, pending.reason) == ("rm", 1, 10.0, "in doubt")
    stored = dataclasses.asdict(pending)  # how the Redis store keeps it, and reads it back
    assert PendingApproval(**stored) == pending


def test_the_wire_carries_every_field_of_the_call_under_its_name() -> None:
    call = a_call()
    kwargs = encode(call, "castor:replies:{x}", SECRET)
    assert kwargs["tool_name"] == "rm" and kwargs["decided_by"] == "ann" and "tool" not in kwargs
    job = decode(kwargs)
    for field in dataclasses.fields(ToolCall):
        assert getattr(job, field.name) == getattr(call, field.name), field.name
    assert job.reply_to == "castor:replies:{x}" and verify(SECRET, job)
    assert job.kwargs() == kwargs


@pytest.mark.parametrize(("name", "value"), [
    ("arguments", {"path": "/etc"}), ("checked", {"path": "/etc", "n": 3}), ("attempt", 2), ("step", 64),
    ("decided_by", "mallory"), ("charged", {}), ("usage", None), ("reply_to", "castor:replies:{y}"),
    ("was_hitl", False), ("review_reason", "x"),
])
def test_the_token_signs_every_field(name: str, value: object) -> None:
    kwargs = encode(a_call(), "castor:replies:{x}", SECRET)
    assert verify(SECRET, decode(kwargs))
    assert not verify(SECRET, decode({**kwargs, name: value}))


@pytest.mark.parametrize(("change", "reason"), [
    ({"tool": "rm"}, "unexpected task fields: tool"),
    ({"step": True}, "task field 'step' is missing or not a int"),
    ({"checked": None}, "task field 'checked' is missing or not a dict"),
    ({"charged": {"api": "lots"}}, "task field 'charged' must map resources to numbers"),
    ({"attempt": -1}, "step and attempt must not be negative"),
])
def test_a_malformed_task_is_refused_naming_what_is_wrong(change: dict[str, Any], reason: str) -> None:
    kwargs = {**encode(a_call(), "", None), **change}
    with pytest.raises(Malformed) as caught:
        decode(kwargs)
    assert caught.value.reason == reason
    job = caught.value.job  # what the refusal is recorded against: its run, if it names one (with a step)
    if "step" in change:
        assert job is None
    else:
        assert job is not None and (job.run_id, job.step) == ("run-1", 63)


def test_a_worker_and_the_kernel_build_the_same_record_from_the_same_call() -> None:
    call = a_call()
    call.finished_at = 1_700_000_000.5  # as the worker's reply reports it
    job: Job = decode(encode(call, "", SECRET))
    job.finished_at = call.finished_at
    assert job.record({"ok": True}) == call.record({"ok": True})
    assert call.record(1).model_dump() == {
        "request": {"tool_name": "rm", "arguments": {"path": "/tmp/x", "n": "3"}}, "response": 1, "was_hitl": True,
        "needs_review": False, "review_reason": None, "child_checkpoint": None, "charged": {"api": 2.0},
        "decided_by": "ann", "finished_at": 1_700_000_000.5, "usage": {"api": 64.0}, "failure": None,
    }
