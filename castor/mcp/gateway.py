"""The gateway's state, without MCP: the kernel its sessions share, the tools it lists, and which run
each session drives.

A session's run is named by the client (``_meta["castor/run"]`` on a call: the pid every result
carries, so a client picks its run up again after a reconnect or a gateway restart), else by the
transport's session (``--pid`` for the stdio connection, the ``Mcp-Session-Id`` of an HTTP session),
else it is a run of its own.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from castor._ids import check_pid
from castor.errors import ConfigError
from castor.kernel import Castor
from castor.mcp.session import Options, Outcome, Progress, Session, refuse_foreign
from castor.registry import ToolSpec

RUN_META = "castor/run"  # _meta key: the run (pid) a call belongs to
KEY_META = "castor/idempotency_key"  # _meta key: a retry with the same key runs the call at most once
KEY_ARGUMENT = "_idempotency_key"  # the same as an argument, for clients that cannot set _meta
RESERVED = "castor_"  # the gateway's own tools; a Castor tool may not take the prefix


@dataclass(frozen=True)
class ToolInfo:
    """What ``tools/list`` says about one tool."""

    name: str
    description: str
    schema: dict[str, Any]
    destructive: bool
    idempotent: bool


def describe(spec: ToolSpec) -> ToolInfo:
    """A tool as MCP clients see it: its docstring, Castor's argument schema, and whether it waits for a
    human (said in the description too, for clients that ignore annotations)."""
    doc = " ".join((spec.func.__doc__ or "").split()) or f"The {spec.name} tool."
    if spec.gated:
        doc += " [castor: destructive: each call waits for a human's approval before it runs]"
    cost = ", ".join(f"{amount:g} {resource}" for resource, amount in spec.cost.items())
    if cost:
        doc += f" [castor: costs {cost}]"
    return ToolInfo(spec.name, doc, spec.schema.json_schema(), spec.gated, spec.idempotent)


class Gateway:
    """The kernel of every session, and the sessions by pid."""

    def __init__(self, kernel: Castor, options: Options, *, default_pid: str | None = None,
                 client_may_decide: bool = False) -> None:
        reserved = [name for name in kernel.tools.names() if name.startswith(RESERVED)]
        if reserved:
            raise ConfigError(f"tool {reserved[0]!r}: names starting with {RESERVED!r} are the gateway's own")
        self.kernel = kernel
        self.options = options
        self.default_pid = check_pid(default_pid) if default_pid else None
        self.client_may_decide = client_may_decide
        self.sessions: dict[str, Session] = {}
        self.tools = [describe(spec) for spec in kernel.tools]

    def pid_for(self, meta: Mapping[str, Any] | None, transport_session: str | None) -> str:
        """The run a call belongs to (see the module's docstring)."""
        named = (meta or {}).get(RUN_META)
        if named is not None:
            return check_pid(str(named))
        if self.default_pid is not None:
            return self.default_pid
        if transport_session:
            return f"mcp-{re.sub(r'[^A-Za-z0-9_.-]', '', transport_session)[:32] or uuid.uuid4().hex[:12]}"
        return f"mcp-{uuid.uuid4().hex[:12]}"

    def session(self, pid: str) -> Session:
        """The session of run ``pid``, made on first use."""
        found = self.sessions.get(pid)
        if found is None:
            found = self.sessions[pid] = Session(self.kernel, pid, self.options)
        return found

    async def call(self, name: str, arguments: dict[str, Any], meta: Mapping[str, Any] | None,
                   transport_session: str | None, progress: Progress | None = None) -> Outcome:
        """Issue ``name(**arguments)`` in the run of its session."""
        arguments = dict(arguments)
        key = (meta or {}).get(KEY_META)
        if KEY_ARGUMENT in arguments:
            key = arguments.pop(KEY_ARGUMENT)
        pid = self.pid_for(meta, transport_session)
        ephemeral = RUN_META not in (meta or {}) and self.default_pid is None and not transport_session
        session = self.session(pid)
        try:
            return await session.call(name, arguments, None if key is None else str(key), progress)
        finally:
            if ephemeral:  # a call with no session to come back to: its run is one call long
                await self._drop(pid, "MCP call without a session")
            await self._sweep()

    async def _drop(self, pid: str, reason: str) -> None:
        session = self.sessions.pop(pid, None)
        if session is not None:
            await session.close(reason)

    async def _sweep(self) -> None:
        """Stop the drives of sessions idle for ``idle_after`` seconds (a client that went away): their runs
        are stored and a later call with their pid resumes them."""
        cutoff = time.monotonic() - self.options.idle_after
        for pid, session in list(self.sessions.items()):
            if session.last_used < cutoff and not session.lock.locked():
                await self._drop(pid, "MCP session idle")

    async def status(self, pid: str) -> dict[str, Any]:
        """What ``castor_status`` answers: the run's status, steps and what its budgets have left."""
        backend = self.kernel.backend
        header = await backend.runs.load(pid)
        refuse_foreign(header, pid)  # another agent's run is none of the client's business
        if header is None:
            return {"pid": pid, "status": "NEW", "steps": 0, "budgets": dict(self.options.budgets or {})}
        cp = await self.kernel.aload(pid)
        budgets = {r: {"limit": c.max_budget, "used": c.current_usage, "left": c.max_budget - c.current_usage}
                   for r, c in cp.capabilities.items()}
        return {
            "pid": pid, "status": cp.status, "steps": len(cp.syscall_log), "budgets": budgets,
            "pending": cp.pending_hitl and {"step": cp.pending_step, "tool": cp.pending_tool},
            "speculative": cp.speculative, "scopes": list(cp.scopes),
        }

    async def decide(self, pid: str, outcome: str, reason: str) -> str:
        """Record a decision on the run's waiting call (only with ``--client-may-decide``)."""
        from castor.kernel.approvals import OUTCOMES
        from castor.seams import Decision

        if not self.client_may_decide:
            raise ConfigError("the client may not decide its own calls (start the gateway with --client-may-decide)")
        header = await self.kernel.backend.runs.load(pid)
        refuse_foreign(header, pid)  # its own calls: never a decision on another agent's run in the store
        if header is None or header.pending_step is None:
            raise ConfigError(f"run {pid!r} has no call waiting for a decision")
        if outcome not in OUTCOMES:
            raise ConfigError(f"decision must be approve, reject or modify, not {outcome!r}")
        decision = Decision(run_id=pid, step=header.pending_step, outcome=OUTCOMES[outcome], by="mcp-client",
                            at=time.time(), reason=reason)
        await self.kernel.backend.approvals.decide(decision)
        return f"{outcome} recorded on run {pid} step {header.pending_step}"

    async def close(self) -> None:
        """Stop every session's drive (each run is stored, resumable) and release the kernel."""
        for session in list(self.sessions.values()):
            await session.close()
        await self.kernel.close()


def budgets_of(items: Iterable[str] | None, configured: Mapping[str, float]) -> dict[str, float]:
    """The sessions' budgets: the config's ``[budgets]``, then ``--budget K=V`` over them."""
    from castor.cli._runs import parse_budgets

    merged = {key: float(value) for key, value in configured.items()}
    merged.update(parse_budgets(list(items or [])))
    return merged
