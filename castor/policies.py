"""Approval policies for ``Castor.run_until_complete``: async callables ``(checkpoint) -> (decision, feedback)``.

``decision`` is ``"approve"``, ``"reject"`` or ``"modify"``; ``feedback`` is the reason or the
modification the agent receives.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TextIO

from castor.checkpoint import AgentCheckpoint


async def auto_approve(cp: AgentCheckpoint) -> tuple[str, str | None]:
    """Approve every pending call (tests, trusted environments)."""
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
