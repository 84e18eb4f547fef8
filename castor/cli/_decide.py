"""``castor approve``, ``reject`` and ``modify``: record a human's decision on a run's pending call, then
resume the run to its next stop or its end.

The decision goes through the kernel (``kernel.decide``): an approved call is executed and journaled
right away, a rejection or modification is journaled as the agent's answer. For a run a host program
saved (no import specs), the CLI cannot rebuild the agent: it records the decision in the store, where
the kernel finds it when the host program resumes the run.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from castor._terminal import cancelled, nothing_waits
from castor.checkpoint import AgentCheckpoint
from castor.cli._celery_cmds import add_executor_options
from castor.cli._common import command
from castor.cli._render import call_text, short
from castor.cli._runs import MCP_AGENT, RunFailed, add_hitl, go, kernel_of, load_run, opened, out, rebuild
from castor.kernel.approvals import default_user, refuse_if_cancelled
from castor.kernel.children import driving_parent, pending_child
from castor.seams import Backend, Decision, PendingApproval

PAST = {"approve": "Approved", "reject": "Rejected", "modify": "Modified"}


def pending_step(cp: AgentCheckpoint) -> int:
    """The journal position of the pending call."""
    return cp.pending_step if cp.pending_step is not None else len(cp.syscall_log)


async def record_only(backend: Backend, cp: AgentCheckpoint, outcome: str, feedback: str, by: str | None) -> str:
    """Store the decision without resuming (the host program resumes); returns who decided."""
    target = pending_child(cp) or cp
    step = pending_step(target)
    approvals = backend.approvals
    if await approvals.decision(target.pid, step) is None:
        # A checkpoint saved from JSON may never have had its request stored; the decision needs one.
        pending = target.pending_hitl or {}
        await approvals.request(
            PendingApproval(target.pid, step, str(pending.get("tool_name")), dict(pending.get("arguments") or {}),
                            time.time())
        )
    who = by or default_user()
    await approvals.decide(Decision(target.pid, step, outcome, who, time.time(), feedback))  # type: ignore[arg-type]
    await refuse_if_cancelled(backend, target, *([cp] if target is not cp else []))
    return who


async def waiting_in_store(backend: Backend, cp: AgentCheckpoint) -> None:
    """Give ``cp`` the call its run waits on in the approval store when its header shows none: a resume in
    another process clears the header's pending call as it starts, before it reaches the step again, and
    an approval given in that moment must still find the call."""
    if cp.pending_hitl or cp.status == "COMPLETED":
        return
    waiting = [p for p in await backend.approvals.pending(cp.pid) if p.step == len(cp.syscall_log)]
    if waiting:
        call = waiting[-1]
        cp.pending_hitl = {"tool_name": call.tool_name, "arguments": call.arguments}
        cp.pending_step, cp.pending_reason = call.step, call.reason or None


async def owner(backend: Backend, cp: AgentCheckpoint) -> AgentCheckpoint:
    """The run that drives ``cp``: a child agent's pending call is decided, and resumed, through its parent.
    A child of a run an operator cancelled has nothing to decide (``NothingPendingError``): the cancel
    dropped its call, and a decision recorded on it would run it when the parent is resumed."""
    while cp.spec is None and (parent := await driving_parent(backend, cp)) is not None:
        parent = await load_run(backend, parent.pid)  # with its journal
        if cancelled(parent):
            raise nothing_waits(parent, "decide")
        if (parent.pending_hitl or {}).get("child") != cp.pid:
            break
        cp = parent
    return cp


async def decide(args: argparse.Namespace, outcome: str, feedback: str) -> int:
    """Record ``outcome`` on the pending call of ``args.pid`` and resume the run."""
    async with opened(args) as backend:
        cp = await owner(backend, await load_run(backend, args.pid))
        await waiting_in_store(backend, cp)
        if not cp.pending_hitl:
            raise nothing_waits(cp, outcome)
        if cp.spec is None:
            who = await record_only(backend, cp, outcome, feedback, args.by)
            recorded = f"Decision recorded ({outcome} by {who}) on {call_text(str(cp.pending_tool), cp.pending_args)}."
            if cp.agent_function_name == MCP_AGENT:  # castor.mcp: the gateway waiting on the call takes it
                out(f"{PAST[outcome]}: {cp.pid}", recorded,
                    "An MCP session's run: its gateway answers the waiting call (or the client's retry of it).")
                return 0
            out(
                f"{PAST[outcome]}: {cp.pid}",
                recorded,
                "This run was saved by a host program without import specs, so the host program resumes it:",
                "  cp = kernel.load(pid); cp = await kernel.run(agent, checkpoint=cp)",
            )
            return 0
        loaded = rebuild(cp, "resume")
        kernel = kernel_of(loaded, backend, args)
        try:
            step, child, tool = pending_step(cp), pending_child(cp), cp.pending_tool
            await kernel.decide(cp, outcome, feedback or None, by=args.by)
            out(f"{PAST[outcome]}: {cp.pid}")
            if cancelled(cp):  # an operator cancelled it while the decided call ran: not resumed
                who = (cp.preemption_payload or {}).get("by") or "someone"
                out(f"Run {cp.pid} was cancelled by {who} meanwhile: the decided step is journaled, the run not "
                    f"resumed ({command(args, 'resume', cp.pid)} goes on)")
                return 0
            if child is None and step < len(cp.syscall_log):
                record = cp.syscall_log[step]
                out(f"Step {step}: {call_text(record.tool_name, record.arguments)} -> {short(record.response)}")
            elif child is None and step == len(cp.syscall_log):
                failure = cp.failures[-1] if cp.failures else None
                reason = f"{failure.error_type}: {failure.message}" if failure else "no result"
                out(
                    f"Step {step}: the approved call failed ({reason}); it was journaled for audit, not cached.",
                    f"The run is resumable (the call runs again): {command(args, 'resume', cp.pid)}",
                )
                raise RunFailed(f"the approved call to {tool} failed: {reason}")
            # Else steps before it have no record yet (calls left running beside it): the run reaches it again.
            return await go(kernel, loaded.agent, cp, args)
        finally:
            await kernel.executor.close()


async def cmd_approve(args: argparse.Namespace) -> int:
    """Approve the pending call: it is executed now, then the run resumes."""
    return await decide(args, "approve", "")


async def cmd_reject(args: argparse.Namespace) -> int:
    """Reject the pending call: the agent receives HITL_REJECTED with the reason, then the run resumes."""
    return await decide(args, "reject", args.reason)


async def cmd_modify(args: argparse.Namespace) -> int:
    """Answer the pending call with feedback instead of running it (HITL_MODIFIED), then resume."""
    return await decide(args, "modify", args.feedback)


def add_commands(subparsers: Any) -> None:
    """Register approve, reject and modify."""
    specs = (
        ("approve", cmd_approve, None, "execute the pending call, then resume the run"),
        ("reject", cmd_reject, ("--reason", "why the call is refused (the agent receives it)"),
         "refuse the pending call, then resume the run"),
        ("modify", cmd_modify, ("--feedback", "what the agent should do instead (it receives it)"),
         "answer the pending call with feedback instead of running it, then resume"),
    )
    for name, handler, text, summary in specs:
        parser = subparsers.add_parser(name, help=summary, description=handler.__doc__)
        parser.add_argument("pid", metavar="PID")
        if text is not None:
            parser.add_argument(text[0], required=True, help=text[1])
        parser.add_argument("--as", dest="by", metavar="NAME", help="who decides (default: the OS user)")
        add_hitl(parser)
        add_executor_options(parser)
        parser.set_defaults(handler=handler)
