"""The run state a user holds: ``AgentCheckpoint`` and its journal of ``SyscallRecord``s.

A checkpoint is plain data (pydantic): it round-trips through JSON and carries its journal, so a
checkpoint restored in another process resumes with nothing re-executed. Records are frozen: once a
step is journaled it never changes, which is what lets a fork share its parent's records instead of
copying them.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from castor._ids import check_pid
from castor.mmu.messages import CastorMessage

RunStatus = Literal["RUNNING", "SUSPENDED_FOR_HITL", "PREEMPTED", "COMPLETED", "FAILED"]
FINISHED: frozenset[str] = frozenset({"COMPLETED", "FAILED"})


class Capability(BaseModel):
    """A depletable budget on one resource for one run."""

    resource_type: str
    max_budget: float
    current_usage: float = 0.0

    @property
    def remaining(self) -> float:
        """What is left to spend (never negative)."""
        return max(self.max_budget - self.current_usage, 0.0)


class SyscallRecord(BaseModel):
    """One journaled step: the request, what the agent received, and how it was decided and charged."""

    model_config = ConfigDict(frozen=True)

    request: dict[str, Any]
    response: Any
    was_hitl: bool = False
    needs_review: bool = False
    review_reason: str | None = None
    child_checkpoint: AgentCheckpoint | None = None
    # Castor additions: what the step cost, who decided it, when it finished.
    charged: dict[str, float] = Field(default_factory=dict)
    decided_by: str | None = None
    finished_at: float | None = None
    # The run's total usage after this step, on every USAGE_STRIDE-th record (see usage_of).
    usage: dict[str, float] | None = None
    # A step whose call raised and which the run went past (the agent caught the error and went on): what
    # it raised, raised again when the step is replayed (``castor.kernel.failed_steps``); its response is None.
    failure: dict[str, Any] | None = None

    @property
    def tool_name(self) -> str:
        """The requested tool's name."""
        return str(self.request.get("tool_name", ""))

    @property
    def arguments(self) -> dict[str, Any]:
        """The requested call's raw arguments."""
        args = self.request.get("arguments")
        return args if isinstance(args, dict) else {}


class StepFailure(BaseModel):
    """A tool call that raised, kept for audit. A step the run stopped at is not cached (a resumed run
    executes it again); one the run went past is also journaled as its record (``SyscallRecord.failure``)."""

    model_config = ConfigDict(frozen=True)

    step: int
    tool_name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    error_type: str
    message: str
    at: float = Field(default_factory=time.time)
    # What the failed call was charged all the same: a model stream stopped part way pays what it received.
    charged: dict[str, float] = Field(default_factory=dict)


# Above this many bytes of JSON a failure keeps its call's arguments by size and digest only (the worker
# uses its smaller ``max_argument_bytes`` when it refuses arguments as too big).
FAILURE_ARGUMENT_BYTES = 64 * 1024


def bounded_arguments(arguments: dict[str, Any], limit: int = FAILURE_ARGUMENT_BYTES) -> dict[str, Any]:
    """``arguments`` as a ``StepFailure`` keeps them: as they are, or, above ``limit`` bytes of canonical
    JSON, ``{"_omitted": "<size> bytes, sha256 <hex>"}``: a refused 10 MB argument costs Redis a line."""
    import json

    try:
        body = json.dumps(arguments, sort_keys=True, separators=(",", ":")).encode()
    except (TypeError, ValueError):  # not JSON: it cannot be huge JSON either; redaction has run already
        return arguments
    if len(body) <= limit:
        return arguments
    return {"_omitted": f"{len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()}"}


class RunSpec(BaseModel):
    """How to rebuild a run's kernel in another process: import specs of the agent and tools."""

    agent: str
    tools: list[str] = Field(default_factory=list)
    destructive: list[str] = Field(default_factory=list)
    source_hash: str | None = None
    # The file behind each import spec's module -> sha256 of its source, so a refusal can name what changed.
    sources: dict[str, str] = Field(default_factory=dict)


class AgentCheckpoint(BaseModel):
    """Everything about one run: status, budgets, the journal, the pending call, the result."""

    pid: str
    parent_pid: str | None = None
    status: RunStatus
    agent_function_name: str
    capabilities: dict[str, Capability]
    syscall_log: list[SyscallRecord] = Field(default_factory=list)
    pending_hitl: dict[str, Any] | None = None
    context_history: list[CastorMessage | dict[str, Any]] = Field(default_factory=list)
    result: Any | None = None
    preemption_reason: str | None = None
    preemption_payload: dict[str, Any] | None = None
    partial_work: str | None = None
    # Castor additions.
    error: str | None = None
    pending_step: int | None = None
    pending_reason: str | None = None
    # Steps reopened for a human after their worker was lost mid-call: step -> approval round to decide.
    in_doubt: dict[int, int] = Field(default_factory=dict)
    failures: list[StepFailure] = Field(default_factory=list)
    # Records of steps that finished while an earlier step had none yet (calls at once: the earlier one
    # waits for a human, or still runs), kept when the run stopped: a resume serves them without making
    # the calls again, and journals them once the steps before them are (castor.kernel.context).
    held: dict[int, SyscallRecord] = Field(default_factory=dict)
    speculative: bool = False
    # Driven once on a store asked for at most once (castor.seams.Backend.at_most_once): every plain call of
    # the run is claimed before it runs, wherever it is resumed or forked (a store URL without the option too).
    at_most_once: bool = False
    scopes: list[str] = Field(default_factory=list)
    spec: RunSpec | None = None
    children: dict[str, AgentCheckpoint] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    # The conversation before the run's first step: each drive restarts from it, replay rebuilds the rest
    # (castor.mmu.core). None until a kernel with an MMU first drives the run.
    context_start: list[CastorMessage | dict[str, Any]] | None = None

    @property
    def pending_tool(self) -> str | None:
        """The name of the tool waiting for approval, if any."""
        return self.pending_hitl.get("tool_name") if self.pending_hitl else None

    @property
    def pending_args(self) -> dict[str, Any] | None:
        """The arguments of the call waiting for approval, if any."""
        return self.pending_hitl.get("arguments") if self.pending_hitl else None

    @property
    def is_suspended(self) -> bool:
        """True while a call waits for a human decision."""
        return self.status == "SUSPENDED_FOR_HITL"

    @property
    def pending_child(self) -> AgentCheckpoint | None:
        """The child agent whose call the pending approval is, if any."""
        handle = (self.pending_hitl or {}).get("child")
        return self.children.get(handle) if handle else None

    @property
    def pending_in_doubt(self) -> bool:
        """True while the call waiting is a step left in doubt (the worker or process running it was lost
        mid-call, so it may have acted): approving it runs it again. A child's call counts as the parent's."""
        if not self.is_suspended:
            return False
        child = self.pending_child
        if child is not None:
            return child.pending_in_doubt
        return self.pending_step is not None and self.pending_step in self.in_doubt

    @property
    def is_complete(self) -> bool:
        """True once the agent returned."""
        return self.status == "COMPLETED"

    def budget_used(self, resource: str) -> float:
        """What the run has spent on ``resource`` (0 for an untracked resource)."""
        cap = self.capabilities.get(resource)
        return cap.current_usage if cap else 0.0

    def budget_remaining(self, resource: str) -> float:
        """What the run may still spend on ``resource`` (``inf`` for an untracked resource)."""
        cap = self.capabilities.get(resource)
        return cap.remaining if cap else math.inf

    def fork(self, *, at_step: int) -> AgentCheckpoint:
        """A new run whose first ``at_step`` steps are this run's records, shared, not copied.

        Its budget usage is exactly what those steps were charged, so re-executed steps are charged once.
        """
        if not isinstance(at_step, int) or not 0 <= at_step <= len(self.syscall_log):
            raise ValueError(f"at_step must be between 0 and {len(self.syscall_log)}, got {at_step!r}")
        prefix = self.syscall_log[:at_step]
        used = usage_of(prefix)
        caps = {
            name: Capability.model_construct(
                resource_type=cap.resource_type, max_budget=cap.max_budget, current_usage=used.get(name, 0.0)
            )
            for name, cap in self.capabilities.items()
        }
        now = time.time()
        return AgentCheckpoint.model_construct(
            pid=check_pid(f"{self.pid}::fork-{at_step}"),
            parent_pid=self.pid,
            status="RUNNING",
            agent_function_name=self.agent_function_name,
            capabilities=caps,
            syscall_log=prefix,
            pending_hitl=None,
            context_history=list(self.context_history),
            context_start=None if self.context_start is None else list(self.context_start),
            result=None,
            preemption_reason=None,
            preemption_payload=None,
            partial_work=None,
            error=None,
            pending_step=None,
            pending_reason=None,
            failures=[],
            held={},  # a fork makes the steps after at_step again
            speculative=self.speculative,
            at_most_once=self.at_most_once,
            scopes=list(self.scopes),
            spec=self.spec,
            children={},
            created_at=now,
            updated_at=now,
        )


_RECORD_NEW = object.__new__
_NO_FIELDS: set[str] = set()
# The setters of pydantic's per-instance slots, taken from their descriptors once: object.__setattr__
# would look each slot up on the class and unpack its arguments again at every record (a fifth of its cost).
_SET_DICT, _SET_FIELDS, _SET_EXTRA, _SET_PRIVATE = (
    BaseModel.__dict__[slot].__set__
    for slot in ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")
)


# A record's fields in declaration order (as pydantic's own constructor leaves them), at their defaults;
# new_record always sets ``charged`` (its own mapping, never this one).
_RECORD_DEFAULTS: dict[str, Any] = {
    "request": None, "response": None, "was_hitl": False, "needs_review": False, "review_reason": None,
    "child_checkpoint": None, "charged": {}, "decided_by": None, "finished_at": None, "usage": None, "failure": None,
}


def new_record(
    request: dict[str, Any],
    response: Any,
    was_hitl: bool = False,
    needs_review: bool = False,
    review_reason: str | None = None,
    child_checkpoint: AgentCheckpoint | None = None,
    charged: dict[str, float] | None = None,
    decided_by: str | None = None,
    finished_at: float | None = None,
    usage: dict[str, float] | None = None,
    failure: dict[str, Any] | None = None,
) -> SyscallRecord:
    """A ``SyscallRecord`` built from values the kernel produced itself, without re-validating them.

    This is the one place records are made on the hot path: ``model_construct`` costs about 4 µs, a
    tenth of a whole syscall's budget; the fields are already of the declared types here. It sets
    pydantic's per-instance slots itself: ``tests/test_dependency_internals.py`` fails when pydantic
    changes them (``pyproject.toml`` pins pydantic below 3). Callers name the fields; the kernel's one
    builder of a step's record (``castor.seams.ToolCall.record``) passes them in order, since matching ten
    keywords costs a record as much as one of its slots.
    """
    record = _RECORD_NEW(SyscallRecord)
    # A copy of the defaults with the usual step's four values set: half what an eleven-key literal costs
    # since a dict's copy takes its keys' table whole rather than inserting (and regrowing) key by key.
    fields = _RECORD_DEFAULTS.copy()
    fields["request"] = request
    fields["response"] = response
    fields["charged"] = charged if charged is not None else {}  # never one shared mutable default
    fields["finished_at"] = finished_at
    if was_hitl:
        fields["was_hitl"] = was_hitl
    if needs_review:
        fields["needs_review"] = needs_review
    if review_reason is not None:
        fields["review_reason"] = review_reason
    if child_checkpoint is not None:
        fields["child_checkpoint"] = child_checkpoint
    if decided_by is not None:
        fields["decided_by"] = decided_by
    if usage is not None:
        fields["usage"] = usage
    if failure is not None:
        fields["failure"] = failure
    _SET_DICT(record, fields)
    # Shared and empty: pydantic copies this set before it would ever change it (model_copy).
    _SET_FIELDS(record, _NO_FIELDS)
    _SET_EXTRA(record, None)
    _SET_PRIVATE(record, None)
    return record


USAGE_STRIDE = 64


def failure_usage(failures: list[StepFailure]) -> dict[str, float]:
    """What calls that failed or stopped part way were charged, per resource (``StepFailure.charged``)."""
    used: dict[str, float] = {}
    for failure in failures:
        for name, amount in failure.charged.items():
            used[name] = used.get(name, 0.0) + amount
    return used


def run_usage(
    records: list[SyscallRecord], failures: list[StepFailure], held: Mapping[int, SyscallRecord] | None = None
) -> dict[str, float]:
    """What a run was charged: its journaled steps (``usage_of``), its failures' charges, and the kept
    records (``AgentCheckpoint.held``) of the steps the journal has not reached: their calls were made."""
    used = usage_of(records)
    for name, amount in failure_usage(failures).items():
        used[name] = used.get(name, 0.0) + amount
    for step, record in (held or {}).items():
        if step >= len(records):  # else journaled since it was kept: counted with the journal
            for name, amount in (record.charged or {}).items():
                used[name] = used.get(name, 0.0) + amount
    return used


def usage_of(records: list[SyscallRecord]) -> dict[str, float]:
    """What ``records`` were charged in all, per resource.

    Every ``USAGE_STRIDE``-th record carries the run's total so far (``usage``), so this sums at most
    that many records after the last total: a fork of a long run costs O(1), not O(steps).
    """
    start = len(records)
    used: dict[str, float] = {}
    while start > 0:
        carried = records[start - 1].usage
        if carried is not None:
            used = dict(carried)
            break
        start -= 1
    get = used.get
    for index in range(start, len(records)):
        charged = records[index].charged
        if charged:
            for name, amount in charged.items():
                used[name] = get(name, 0.0) + amount
    return used


def usage_after(usage: dict[str, float], charged: Mapping[str, float] | None) -> dict[str, float]:
    """``usage`` (a run's total so far) plus what one step was ``charged``: a new dict."""
    total = dict(usage)
    if charged:
        for name, amount in charged.items():
            total[name] = total.get(name, 0.0) + amount
    return total


SyscallRecord.model_rebuild()
AgentCheckpoint.model_rebuild()

