"""How the CLI prints runs. Shapes that scripts already read (from castor-kernel 0.5.1) are kept exactly:
``PID:    <pid>``, ``Status: <status>``, ``Result: <result>``, the ``Execution Summary:`` block, the ``ps``
markers, and ``inspect``'s ``Capabilities:`` / ``Syscall log: N entries`` / ``--- Pending HITL ---``.
Everything here returns lines; the commands print them.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from castor._ids import is_child_agent
from castor._redact import masked
from castor.checkpoint import FINISHED, AgentCheckpoint, SyscallRecord
from castor.cli._memory_map import MMU_STEPS, memory_lines, mmu_step_text
from castor.cli._model_steps import model_step_text
from castor.kernel.model import is_model_step
from castor.seams import RunSummary
from castor.summary import ExecutionSummary, scan

MCP_AGENT = "mcp_session"  # the agent of an MCP gateway session's run (castor.mcp.session)

MARKERS = {
    "SUSPENDED_FOR_HITL": "[HITL]",
    "COMPLETED": "[DONE]",
    "RUNNING": "[RUN ]",
    "PREEMPTED": "[PREM]",
    "FAILED": "[FAIL]",
}
WIDTH = 100


def short(value: Any, width: int = WIDTH) -> str:
    """A value on one line: strings as they are, anything else as JSON, cut at ``width``."""
    text = value if isinstance(value, str) else json.dumps(value, default=repr, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def call_text(tool: str, arguments: Any) -> str:
    """``tool(key="value", ...)``, sealed sensitive values shown as ``***``."""
    if not isinstance(arguments, dict):
        return f"{tool}()"
    arguments = masked(arguments)
    args = ", ".join(f"{k}={json.dumps(v, default=repr, ensure_ascii=False)}" for k, v in arguments.items())
    return f"{tool}({args})"


def number(value: float) -> str:
    """``50`` rather than ``50.0``; ``inf`` stays ``inf``."""
    return f"{value:g}"


def human_outcome(record: SyscallRecord) -> str:
    """What a human decided on a step: approved, rejected or modified."""
    response = record.response
    status = response.get("status") if isinstance(response, dict) else None
    return {"HITL_REJECTED": "rejected", "HITL_MODIFIED": "modified"}.get(str(status), "approved")


def result_lines(cp: AgentCheckpoint) -> list[str]:
    """The lines every command prints about where a run stopped."""
    lines = [f"PID:    {cp.pid}", f"Status: {cp.status}"]
    if cp.status == "COMPLETED" and cp.result is not None:
        lines.append(f"Result: {cp.result}")
    if cp.error:
        lines.append(f"Error:  {cp.error}")
    if cp.status == "PREEMPTED" and cp.preemption_reason:
        lines.append(f"Preempted: {cp.preemption_reason}")
    if cp.pending_hitl:
        step = "" if cp.pending_step is None else f"step {cp.pending_step}: "
        lines.append(f"Pending: {step}{call_text(str(cp.pending_tool), cp.pending_args)}")
        if cp.pending_reason:  # e.g. in doubt: it started and may have acted, and approving runs it again
            lines.append(f"Why:    {cp.pending_reason}")
    return lines


def summary_lines(summary: ExecutionSummary) -> list[str]:
    """The ``Execution Summary:`` block; steps a human decided are listed apart from flagged ones."""
    lines = [
        "Execution Summary:",
        f"  Total steps:    {summary.total_steps}",
        f"  Auto-verified:  {summary.auto_verified}",
        f"  Human-decided:  {len(summary.human_decided)}",
        f"  Flagged:        {summary.flagged_count}",
    ]
    lines += [f"    Step {step.index}: {step.tool_name} — {step.reason}" for step in summary.flagged]
    return lines


def decided_lines(cp: AgentCheckpoint) -> list[str]:
    """One line per step a human decided, for the summary's reader."""
    return [
        f"    Decided step {i}: {r.tool_name} — {human_outcome(r)} by {r.decided_by or 'unknown'}"
        for i, r in enumerate(cp.syscall_log)
        if r.was_hitl
    ]


def budget_refusals(cp: AgentCheckpoint) -> int:
    """How many of the run's calls the budget refused (each answered ``INSUFFICIENT_CAPABILITY``)."""
    return sum(
        1 for record in cp.syscall_log
        if isinstance(record.response, dict) and record.response.get("status") == "INSUFFICIENT_CAPABILITY"
    )


def refusal_lines(cp: AgentCheckpoint) -> list[str]:
    """``Refused: N calls by the budget ...`` when the budget refused any call (the agent may have carried on)."""
    refused = budget_refusals(cp)
    if not refused:
        return []
    calls = "call" if refused == 1 else "calls"
    return [f"Refused: {refused} {calls} by the budget (INSUFFICIENT_CAPABILITY; castor inspect {cp.pid} lists them)"]


def finished_lines(cp: AgentCheckpoint) -> list[str]:
    """``result_lines`` (with the budget's refusals) and, for a completed run that ran speculatively or had
    humans decide, the summary."""
    lines = result_lines(cp) + refusal_lines(cp)
    if cp.status == "COMPLETED":
        summary = scan(cp)
        if cp.speculative or summary.flagged or summary.human_decided:
            lines += summary_lines(summary) + decided_lines(cp)
    return lines


def fleet_notes(fleet: dict[str, Any] | None) -> list[str]:
    """Where a fleet run is: ``owner: <coordinator>``, ``queued``, ``parked``, ``waiting: ...``."""
    if not fleet:
        return []
    notes = [f"owner: {fleet['owner']}"] if fleet.get("owner") else []
    notes += [word for word in ("queued", "parked") if fleet.get(word) not in (None, False)]
    if fleet.get("driven_by") and not fleet.get("owner"):  # a coordinator's lease holds its drive claim too
        notes.append(f"driven by {fleet['driven_by']}, outside the fleet")
    if fleet.get("waiting"):
        notes.append(f"waiting: {fleet['waiting']}")
    return notes


def ps_line(run: RunSummary, fleet: dict[str, Any] | None = None) -> str:
    """``[HITL] <pid>  <agent>  N steps  (pending: <tool>)``, then where a fleet run is (``fleet_notes``):
    the same line whatever the store."""
    marker = MARKERS.get(run.status, f"[{run.status[:4]}]")
    steps = f"{run.steps} step" + ("" if run.steps == 1 else "s")
    line = f"{marker} {run.pid}  {run.agent}  {steps}"
    if run.parent_pid:
        line += f"  (parent: {run.parent_pid})"
    if run.status == "SUSPENDED_FOR_HITL":
        line += f"  (pending: {run.pending_tool or '?'})"
    return line + "".join(f"  ({note})" for note in fleet_notes(fleet))


def ps_json(runs: list[RunSummary]) -> str:
    """The run list as JSON."""
    return json.dumps([asdict(run) for run in runs], indent=2, default=repr)


def step_line(index: int, record: SyscallRecord) -> str:
    """One journal record with its flags."""
    flags: list[str] = []
    if record.was_hitl:
        flags.append(f"human: {human_outcome(record)} by {record.decided_by or 'unknown'}")
    if record.needs_review:
        flags.append(f"needs_review: {record.review_reason or 'yes'}")
    if record.charged:
        flags.append("charged " + ", ".join(f"{k}={number(v)}" for k, v in record.charged.items()))
    if record.child_checkpoint is not None:
        flags.append(f"child: {record.child_checkpoint.pid} {record.child_checkpoint.status}")
    if record.failure is not None:  # the call raised; the run went past it (a replay raises it again)
        failure = record.failure
        raised = f"{failure.get('error_type', 'Error')}: {failure.get('message', '')}"
        text = f"  [{index}] {call_text(record.tool_name, record.arguments)} -> raised {short(raised, 60)}"
    elif is_model_step(record.tool_name):
        text = model_step_text(index, record, short)
    elif record.tool_name in MMU_STEPS:
        text = mmu_step_text(index, record, short)
    else:
        text = f"  [{index}] {call_text(record.tool_name, record.arguments)} -> {short(record.response, 60)}"
    return text + (f"  ({'; '.join(flags)})" if flags else "")


def inspect_lines(cp: AgentCheckpoint, fleet: dict[str, Any] | None = None) -> list[str]:
    """Everything about a run, for ``castor inspect``, whatever the store; ``fleet``: where a fleet run is
    (``Fleet:  owner: co-1; parked``)."""
    lines = [f"PID:    {cp.pid}", f"Status: {cp.status}", f"Agent:  {cp.agent_function_name}"]
    if cp.parent_pid:
        lines.append(f"Parent: {cp.parent_pid}")
    if fleet is not None:
        lines.append(f"Fleet:  {'; '.join(fleet_notes(fleet)) or 'not held by a coordinator'}")
    if cp.scopes:
        lines.append(f"Scopes: {', '.join(cp.scopes)}")
    lines.append(f"Mode:   {_mode(cp)}")
    if cp.spec is not None:
        lines.append(f"Spec:   {cp.spec.agent}")
        lines += [f"  tool: {t}" for t in cp.spec.tools]
        if cp.spec.destructive:
            lines.append(f"  destructive: {', '.join(cp.spec.destructive)}")
    else:
        lines.append(f"Spec:   none ({_driven_by(cp)})")
    lines.append("Capabilities:")
    lines += [f"  {r}: {number(c.remaining)} / {number(c.max_budget)} remaining" for r, c in cp.capabilities.items()]
    if not cp.capabilities:
        lines.append("  (no budgets: unlimited)")
    lines.append(f"Syscall log: {len(cp.syscall_log)} entries")
    lines += [step_line(i, record) for i, record in enumerate(cp.syscall_log)]
    lines += kept_lines(cp)
    lines += memory_lines(cp, short)
    if cp.failures:
        lines.append(f"Failures: {len(cp.failures)}")
        lines += [f"  step {f.step}: {f.tool_name}: {f.error_type}: {f.message}" for f in cp.failures]
    lines += pending_lines(cp)
    if cp.status == "COMPLETED" and cp.result is not None:
        lines.append(f"Result: {cp.result}")
    if cp.error:
        lines.append(f"Error:  {cp.error}")
    if cp.preemption_reason:
        lines.append(f"Preempted: {cp.preemption_reason}")
    if cp.partial_work:
        lines.append(f"Partial: {short(cp.partial_work)}")  # what a stopped model stream had written
    return lines


def kept_lines(cp: AgentCheckpoint) -> list[str]:
    """Steps that finished behind a step with no record yet (``AgentCheckpoint.held``): journaled once the
    steps before them are."""
    kept = sorted((step, record) for step, record in cp.held.items() if step >= len(cp.syscall_log))
    if not kept:
        return []
    if cp.status in FINISHED:  # nothing will fill the steps before them: made, charged, never journaled
        head = f"Kept, made but never journaled (the run ended before the steps before them): {len(kept)}"
    else:
        head = f"Kept, journaled after the steps before them: {len(kept)}"
    return [head, *(step_line(s, r) for s, r in kept)]


def _mode(cp: AgentCheckpoint) -> str:
    """How the run treats its calls: speculative or gated, and at most once (``?at_most_once=1``)."""
    mode = "speculative" if cp.speculative else "human approval for destructive calls"
    if cp.at_most_once:
        mode += "; every call not idempotent at most once (one cut off by a crash waits for a human)"
    return mode


def _driven_by(cp: AgentCheckpoint) -> str:
    """Who drives a run that records no specs to import again."""
    if cp.agent_function_name == MCP_AGENT:
        return "an MCP gateway session: a client's next call with its pid goes on with it"
    if is_child_agent(cp.pid, cp.parent_pid, cp.agent_function_name):
        return f"a child agent: its parent {cp.parent_pid} drives it"
    return "saved by a host program; the host program resumes it"


def pending_lines(cp: AgentCheckpoint) -> list[str]:
    """The ``--- Pending HITL ---`` block of a run waiting for a human."""
    if not cp.pending_hitl:
        return []
    lines = ["--- Pending HITL ---"]
    if cp.pending_step is not None:
        lines.append(f"Step: {cp.pending_step}")
    lines.append(f"Tool: {cp.pending_tool}")
    if cp.pending_reason:
        lines.append(f"Reason: {cp.pending_reason}")
    # One element per line: the CLI escapes what a line holds (json.dumps escaped the values already).
    return lines + f"Arguments: {json.dumps(masked(cp.pending_args), indent=2, default=repr)}".splitlines()


def inspect_json(cp: AgentCheckpoint) -> str:
    """The checkpoint as JSON, with each budget's remaining amount and the review summary."""
    data = json.loads(cp.model_dump_json(fallback=repr))
    for resource, cap in cp.capabilities.items():
        data["capabilities"][resource]["remaining"] = cap.remaining
    summary = scan(cp)
    data["summary"] = {
        "total_steps": summary.total_steps,
        "auto_verified": summary.auto_verified,
        "flagged": [step.index for step in summary.flagged],
        "human_decided": [step.index for step in summary.human_decided],
    }
    return json.dumps(data, indent=2, default=repr)
