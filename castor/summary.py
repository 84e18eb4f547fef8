"""``Castor.scan``: what a run did, which steps need a human's review, which a human already approved."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from castor.checkpoint import AgentCheckpoint


@dataclass(frozen=True)
class FlaggedStep:
    """A step that ran speculatively and waits for review."""

    index: int
    tool_name: str
    arguments: dict[str, Any]
    response: Any
    reason: str


@dataclass(frozen=True)
class ApprovedStep:
    """A step a human decided before it ran (approved, rejected or modified)."""

    index: int
    tool_name: str
    decided_by: str | None
    response: Any


@dataclass
class ExecutionSummary:
    """Counts and lists over a run's journal.

    ``flagged`` holds only steps that ran without a human and need review; steps a human decided are
    in ``human_decided`` and are never flagged.
    """

    total_steps: int
    auto_verified: int
    flagged: list[FlaggedStep] = field(default_factory=list)
    tools_used: dict[str, int] = field(default_factory=dict)
    human_decided: list[ApprovedStep] = field(default_factory=list)

    @property
    def flagged_count(self) -> int:
        """How many steps need review."""
        return len(self.flagged)


def scan(cp: AgentCheckpoint) -> ExecutionSummary:
    """Summarize ``cp``'s journal."""
    flagged: list[FlaggedStep] = []
    decided: list[ApprovedStep] = []
    tools: dict[str, int] = {}
    for index, record in enumerate(cp.syscall_log):
        name = record.tool_name
        tools[name] = tools.get(name, 0) + 1
        if record.was_hitl:
            decided.append(ApprovedStep(index, name, record.decided_by, record.response))
        elif record.needs_review:
            flagged.append(
                FlaggedStep(index, name, record.arguments, record.response, record.review_reason or "")
            )
    total = len(cp.syscall_log)
    return ExecutionSummary(total, total - len(flagged) - len(decided), flagged, tools, decided)
