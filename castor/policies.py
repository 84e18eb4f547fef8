"""Approval policies for ``Castor.run_until_complete``: async callables ``(checkpoint) -> (decision, feedback)``.

``decision`` is ``"approve"``, ``"reject"`` or ``"modify"``; ``feedback`` is the reason or the
modification the agent receives.

A step left in doubt (``AgentCheckpoint.pending_in_doubt``: its worker, or the process running it, was lost
mid-call) asks another question than a destructive call does: the call may have acted already, and
approving it runs it a second time. ``auto_approve`` answers the first question only: on a step in doubt it
raises ``InDoubtError`` and the run stays suspended for a human. ``auto_reject`` still rejects (nothing runs
again), and ``interactive`` says the step is in doubt before it asks.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TextIO

from castor.checkpoint import AgentCheckpoint
from castor.errors import InDoubtError


async def auto_approve(cp: AgentCheckpoint) -> tuple[str, str | None]:
    """Approve every pending call (tests, trusted environments), except a step in doubt: ``InDoubtError``,
    the run left suspended for a human, who knows whether the call acted before its worker was lost."""
    if cp.pending_in_doubt:
        raise InDoubtError(
            f"run {cp.pid} waits at step {cp.pending_step} on {cp.pending_tool!r}, in doubt: it started and its "
            "worker (or process) was lost before it gave a result, so it may have acted already. An automatic "
            "approval does not run it again: a human decides (approve runs it again, reject does not)"
        )
    return "approve", None


async def auto_reject(cp: AgentCheckpoint) -> tuple[str, str | None]:
    """Reject every pending call."""
    return "reject", f"auto-rejected: {cp.pending_tool}"


async def interactive(
    cp: AgentCheckpoint, *, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> tuple[str, str | None]:
    """Ask on the terminal: [a]pprove, [r]eject with a reason, or [m]odify with feedback."""
    out = stdout or sys.stdout
    inp = stdin or sys.stdin

    def ask(prompt: str) -> str:
        out.write(prompt)
        out.flush()
        line = inp.readline()
        if not line:
            raise EOFError("no answer on standard input")
        return line.strip()

    def dialogue() -> tuple[str, str | None]:
        args = json.dumps(cp.pending_args, indent=2, default=str)
        out.write(f"\n--- Approval needed: {cp.pid} ---\nTool: {cp.pending_tool}\nArguments: {args}\n")
        if cp.pending_in_doubt:
            out.write("In doubt: this call started and was lost before it gave a result; it may have acted "
                      "already. Approve runs it again; reject does not.\n")
        while True:
            choice = ask("[a]pprove / [r]eject / [m]odify? ").lower()
            if choice in ("a", "approve", "y", "yes"):
                return "approve", None
            if choice in ("r", "reject", "n", "no"):
                return "reject", ask("Reason: ") or "rejected by operator"
            if choice in ("m", "modify"):
                return "modify", ask("Feedback for the agent: ")
            out.write("Please answer a, r or m.\n")

    # The terminal read blocks; keep the event loop free for other runs meanwhile.
    return await asyncio.to_thread(dialogue)
