"""What the console does, over one store: list what waits, decide it, show runs and scopes, cancel, fork.

Pages and API both call this module, so the two never differ. Decisions go the way the CLI's do: on a
run the fleet holds, through ``FleetClient.decide`` (a coordinator wakes and resumes it); on any other
run (a SQLite store, a host program's run), recorded in the store with ``castor.cli._decide``'s
``record_only``, where the waiting process or the next ``castor resume`` finds it. Every value shown is
masked (``castor._redact.masked``): a sealed sensitive argument is ``***``, never its ciphertext.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from castor._redact import masked
from castor._terminal import nothing_waits
from castor.checkpoint import AgentCheckpoint
from castor.cli._decide import owner, record_only, waiting_in_store
from castor.cli._render import human_outcome
from castor.cli._runs import load_run
from castor.console.auth import Denied
from castor.console.resumer import Resumer
from castor.errors import ConfigError, NothingPendingError
from castor.kernel.children import driving_parent, pending_child, top_run
from castor.kernel.forks import store_fork
from castor.seams import Backend, Decision, DecisionOutcome, PendingApproval

if TYPE_CHECKING:  # redis only where the store is Redis
    from castor.fleet.client import FleetClient

FINISHED = ("COMPLETED", "FAILED")


def number(value: float) -> float | None:
    """A budget amount for JSON: ``None`` for unlimited (JSON has no infinity)."""
    return None if math.isinf(value) else value


def budgets_of(cp: AgentCheckpoint) -> dict[str, dict[str, float | None]]:
    """``{resource: {limit, used, left}}`` of a run's own budget."""
    return {
        name: {"limit": number(cap.max_budget), "used": cap.current_usage, "left": number(cap.remaining)}
        for name, cap in cp.capabilities.items()
    }


class Console:
    """The console's operations on ``backend`` (and the fleet's client when the store is the fleet's)."""

    def __init__(self, backend: Backend, fleet: FleetClient | None = None, resumer: Resumer | None = None) -> None:
        self.backend = backend
        self.fleet = fleet
        self.resumer = resumer  # resumes CLI runs of a SQLite store after a decision

    # --- approvals --------------------------------------------------------------------------------

    async def approvals(self, pending: list[PendingApproval] | None = None) -> list[dict[str, Any]]:
        """Every call waiting for a human (or those of ``pending``), oldest first, with its run's agent,
        owner and budget left."""
        if pending is None:
            pending = await self.backend.approvals.pending()
        headers: dict[str, AgentCheckpoint | None] = {}  # per pid waiting: the run that holds its budget
        for call in pending:
            if call.run_id not in headers:
                headers[call.run_id] = await top_run(self.backend, call.run_id)
        roots = {pid: header.pid if header else pid for pid, header in headers.items()}
        owners = await self._owners(sorted(set(roots.values())))
        now = time.time()
        rows = []
        for call in pending:
            header, root = headers[call.run_id], roots[call.run_id]
            rows.append({
                **self._call(call), "age": round(now - call.created_at, 3),
                "agent": header.agent_function_name if header else None, "owner": owners.get(root),
                "budget": budgets_of(header) if header else {},
            })
        return rows

    @staticmethod
    def _call(call: PendingApproval) -> dict[str, Any]:
        return {
            "pid": call.run_id, "step": call.step, "tool": call.tool_name, "arguments": masked(call.arguments),
            "reason": call.reason, "created_at": call.created_at, "attempt": call.attempt,
        }

    async def pending_tool(self, pid: str) -> str:
        """The tool of the call ``pid`` waits on (``NothingPendingError`` if none)."""
        waiting = await self.backend.approvals.pending(pid)
        if waiting:
            return waiting[0].tool_name
        cp = await owner(self.backend, await load_run(self.backend, pid))
        await waiting_in_store(self.backend, cp)
        target = pending_child(cp) or cp
        if not target.pending_hitl:
            raise nothing_waits(cp, "decide")
        return str(target.pending_tool)

    async def decide(self, pid: str, outcome: DecisionOutcome, by: str, text: str = "") -> dict[str, Any]:
        """Record ``outcome`` by ``by`` on the call ``pid`` waits on; the first decision wins."""
        if self.fleet is not None and await self.fleet.is_fleet_run(pid):
            decision = await self.fleet.decide(self.backend, pid, outcome, by, text)
            return self._decision(decision, "a coordinator resumes the run")
        cp = await owner(self.backend, await load_run(self.backend, pid))
        await waiting_in_store(self.backend, cp)
        if not cp.pending_hitl:
            raise nothing_waits(cp, outcome)
        await record_only(self.backend, cp, outcome, text, by)
        target = pending_child(cp) or cp
        decided = await self.backend.approvals.decision(target.pid, _step(target))
        if decided is None:  # cannot happen: record_only just stored it
            raise NothingPendingError(f"run {pid!r}: the decision was not recorded")
        if self.resumer is not None and self.resumer.enabled and cp.spec is not None:
            self.resumer.start(cp.pid)
            return self._decision(decided, "the run resumes now (castor resume)")
        return self._decision(decided, "the run's process, or castor resume, applies it")

    @staticmethod
    def _decision(decision: Decision, then: str) -> dict[str, Any]:
        return {
            "pid": decision.run_id, "step": decision.step, "outcome": decision.outcome, "by": decision.by,
            "reason": decision.reason, "at": decision.at, "next": then,
        }

    # --- runs -------------------------------------------------------------------------------------

    async def runs(self, status: str | None = None, agent: str = "", limit: int = 50) -> list[dict[str, Any]]:
        """Runs, newest first, with owner, steps and budget use; ``agent`` filters on a substring."""
        summaries = await self.backend.runs.list(status=status, limit=limit)
        if agent:
            summaries = [s for s in summaries if agent.lower() in f"{s.agent} {s.pid}".lower()]
        owners = await self._owners([s.pid for s in summaries])
        now = time.time()
        rows = []
        for s in summaries:
            header = await self.backend.runs.load(s.pid)
            rows.append({
                "pid": s.pid, "status": s.status, "agent": s.agent, "parent": s.parent_pid, "steps": s.steps,
                "pending_tool": s.pending_tool, "owner": owners.get(s.pid) or s.owner,
                "age": round(now - s.created_at, 3), "updated_at": s.updated_at,
                "budget": budgets_of(header) if header else {},
            })
        return rows

    async def run(self, pid: str) -> dict[str, Any]:
        """One run with its timeline: every step, failure and the pending call, each with its kind."""
        cp = await load_run(self.backend, pid)
        shared = await self._shared_prefix(cp)
        timeline: list[dict[str, Any]] = []
        for i, rec in enumerate(cp.syscall_log):
            kinds = ["replayed" if i < shared else "live"]
            if rec.was_hitl:
                kinds.append("human")
            if rec.needs_review:
                kinds.append("flagged")
            if i in cp.in_doubt:
                kinds.append("in-doubt")
            result = masked(rec.response)
            if rec.failure is not None:  # raised, and the run went past it: journaled (replays raise it again)
                kinds.append("failed")
                result = f"raised {rec.failure.get('error_type')}: {rec.failure.get('message')}"
            timeline.append({
                "step": i, "tool": rec.tool_name, "kinds": kinds, "arguments": masked(rec.arguments),
                "result": result, "charged": rec.charged, "finished_at": rec.finished_at,
                "decided_by": rec.decided_by, "outcome": human_outcome(rec) if rec.was_hitl else None,
                "review_reason": rec.review_reason,
            })
        journaled_failures = {i for i, rec in enumerate(cp.syscall_log) if rec.failure is not None}
        for failure in cp.failures:
            if failure.step in journaled_failures:  # its record above says it
                continue
            timeline.append({
                "step": failure.step, "tool": failure.tool_name, "kinds": ["failed"],
                "arguments": masked(failure.arguments), "result": f"{failure.error_type}: {failure.message}",
                "charged": {}, "finished_at": failure.at, "decided_by": None, "outcome": None, "review_reason": None,
            })
        timeline.sort(key=lambda row: (row["step"], row["kinds"] != ["failed"]))
        await waiting_in_store(self.backend, cp)
        target = pending_child(cp) or cp
        pending = None
        if target.pending_hitl and cp.status not in FINISHED:
            decided = await self.backend.approvals.decision(target.pid, _step(target))
            pending = {"pid": target.pid, "step": _step(target), "tool": target.pending_tool,
                       "arguments": masked(target.pending_args), "reason": target.pending_reason or "",
                       "decision": self._decision(decided, "") if decided else None}
        owners = await self._owners([cp.pid])
        held = self.fleet is not None and await self.fleet.is_fleet_run(cp.pid)  # a coordinator resumes it
        return {
            "pid": cp.pid, "status": cp.status, "agent": cp.spec.agent if cp.spec else cp.agent_function_name,
            "parent": cp.parent_pid, "owner": owners.get(cp.pid), "created_at": cp.created_at,
            "updated_at": cp.updated_at, "speculative": cp.speculative, "scopes": list(cp.scopes),
            "budget": budgets_of(cp), "timeline": timeline, "pending": pending, "result": masked(cp.result),
            "error": cp.error, "preempted": cp.preemption_reason, "steps": len(cp.syscall_log),
            "fleet": self.fleet is not None,
            "resume": None if held or cp.status == "COMPLETED" else self.resume_command(cp.pid),
        }

    def resume_command(self, pid: str) -> str:
        """The command that applies a recorded decision to a run no coordinator drives."""
        import shlex

        url = self.backend.url
        if url.startswith("sqlite:///"):
            return f"castor resume {shlex.quote(pid)} --db {shlex.quote(url[len('sqlite:///'):])}"
        if self.fleet is not None:  # the store's URL names no key prefix: the fleet's client knows it
            url += ("&" if "?" in url else "?") + f"prefix={self.fleet.prefix}"
        return f"castor resume {shlex.quote(pid)} --store {shlex.quote(url)}"

    async def _shared_prefix(self, cp: AgentCheckpoint) -> int:
        """How many of a fork's first steps are its parent's records (replayed, not run again)."""
        if not cp.parent_pid:
            return 0
        parent = await self.backend.journal.history(cp.parent_pid)
        count = 0
        for mine, theirs in zip(cp.syscall_log, parent, strict=False):
            if mine.model_dump() != theirs.model_dump():
                break
            count += 1
        return count

    async def _owners(self, pids: list[str]) -> dict[str, str | None]:
        """Per pid, who holds the run: a coordinator's name, ``parked`` (waits for a decision, held by none),
        ``queued``, the process that drives it outside the fleet (its drive claim's holder); nothing outside a
        fleet."""
        if self.fleet is None or not pids:
            return {}
        state = await self.fleet.fleet_state(pids)
        return {
            pid: s["owner"] or ("parked" if s["parked"] is not None else "queued" if s["queued"] else s["driven_by"])
            for pid, s in state.items()
        }

    async def cancel(self, pid: str, by: str) -> str:
        """Stop the run: through the fleet if it holds it, else stored PREEMPTED (reason cancelled) under its
        drive claim (``castor.kernel.cancel``)."""
        if self.fleet is not None and await self.fleet.is_fleet_run(pid):
            return await self.fleet.cancel(self.backend, pid, by)
        from castor.kernel.cancel import cancel_stored

        return await cancel_stored(self.backend, pid, by)

    async def fork(self, pid: str, at_step: int) -> tuple[str, str]:
        """A new run sharing the first ``at_step`` steps: submitted to the fleet if the run was, else stored
        and driven at once by ``castor resume`` (a CLI run of a SQLite store), else left to whoever drives
        it. Returns the new pid and what happens next. A second fork at the same step, from this console or any
        other process, is refused (``RunExistsError``: the store stores a fork once, ``castor.kernel.forks``)."""
        cp = await load_run(self.backend, pid)
        parent = await driving_parent(self.backend, cp)
        if parent is not None:  # nothing would drive the fork: a child agent is its parent's to drive
            raise ConfigError(f"run {pid!r} is a child agent of run {parent.pid!r}, which drives it: fork {parent.pid}")
        try:
            child = cp.fork(at_step=at_step)
        except ValueError as exc:
            raise ConfigError(f"cannot fork {pid!r}: {exc}") from exc
        # Stored once, whoever else forks it at this step (another console, castor fork): the store decides.
        if self.fleet is not None and await self.fleet.was_submitted(pid):
            submitted = await self.fleet.submit_fork(self.backend, cp.pid, child, at_step)
            return submitted, "submitted: a coordinator drives it"
        hint = (f"if its forker stopped before driving it, drive it with: {self.resume_command(child.pid)}"
                if child.spec is not None else "")
        await store_fork(self.backend, cp.pid, child, at_step, hint)
        if child.spec is None:  # a host program's run: its code is not known here
            return child.pid, "stored: the program that ran its parent drives it (Castor.run with its checkpoint)"
        if self.resumer is not None and self.resumer.enabled:
            self.resumer.start(child.pid)
            return child.pid, "the fork runs now (castor resume)"
        return child.pid, f"stored: drive it with {self.resume_command(child.pid)}"

    # --- budget scopes ----------------------------------------------------------------------------

    async def scope(self, name: str) -> dict[str, Any]:
        """A scope's ``{resource: {limit, used, left}}``; ``Denied`` 404 if it does not exist."""
        ledger = await self.backend.budgets.read_scope(name)
        if not ledger:
            raise Denied(404, f"budget scope {name!r} does not exist")
        rows = {r: {"limit": lim, "used": used, "left": max(lim - used, 0.0)} for r, (lim, used) in ledger.items()}
        return {"scope": name, "resources": dict(sorted(rows.items()))}

    async def known_scopes(self, runs: int = 200) -> list[str]:
        """The scopes the newest runs draw from (the store keeps no list of scopes)."""
        names: set[str] = set()
        for summary in await self.backend.runs.list(limit=runs):
            header = await self.backend.runs.load(summary.pid)
            if header is not None:
                names.update(header.scopes)
        return sorted(names)

    async def top_up(self, name: str, amounts: dict[str, float]) -> dict[str, Any]:
        """Raise a scope's limits by ``amounts``."""
        await self.scope(name)
        if not amounts:
            raise ConfigError("give at least one resource amount, e.g. api=1000")
        await self.backend.budgets.top_up(name, amounts)
        return await self.scope(name)

    async def reset(self, name: str) -> dict[str, Any]:
        """Set a scope's usage back to zero."""
        await self.scope(name)
        await self.backend.budgets.reset_scope(name)
        return await self.scope(name)


def _step(cp: AgentCheckpoint) -> int:
    return cp.pending_step if cp.pending_step is not None else len(cp.syscall_log)
