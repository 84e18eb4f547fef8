"""One MCP session as one Castor run.

The run's agent is the MCP client: the gateway drives a run whose agent takes the session's tool calls
from a queue and issues each through ``castor.lib.tool``, so every call is a syscall (validated,
charged, gated, executed, journaled). A destructive call suspends the run as any agent's would: the
kernel unwinds the agent and persists the run. The session then waits in the approval store for the
human's decision and drives the run again: the new agent re-issues the calls the journal holds (served
by replay, nothing runs twice) and then the waiting call, which the gate now finds decided.

Nothing of the session lives only in this process: a gateway started again on the same store picks the
run up by its pid, and a retried call carrying an idempotency key is answered from the journal when its
step ran, or issued at its step when it still waits (the key to step map is kept on the run's header).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from castor.checkpoint import AgentCheckpoint
from castor.errors import ConfigError, StaleLeaseError
from castor.kernel import Castor, runner
from castor.kernel.context import RunContext, RunEnding, Suspend, active_run, current_run, outcome_unknown
from castor.lib import tool
from castor.results import SyscallResult, wrap

KEY_ENTRY = "castor-mcp-key"  # the kind of context_history entry that maps an idempotency key to its step
UNKNOWN_ENTRY = "castor-mcp-unknown"  # the kind of entry that keeps the step of a call whose outcome is unknown
AGENT = "mcp_session"  # the agent of a session's run, as the store names it (``Session._agent`` names it so)


def refuse_foreign(header: AgentCheckpoint | None, pid: str) -> None:
    """``ConfigError`` when the store holds run ``pid`` and it is not an MCP session's: a client names the
    run of its calls, and must never drive another agent's run (its journal would take the client's calls,
    a finished run would be reopened, its recorded results answered to the client)."""
    if header is not None and (header.agent_function_name != AGENT or header.spec is not None):
        raise ConfigError(f"run {pid!r} is not an MCP session's run (it is agent {header.agent_function_name!r}'s): "
                          "name a session's run, or none for a new one")
Progress = Callable[[float, str], Awaitable[None]]


@dataclass
class Outcome:
    """What the client receives for one call: the kernel's answer, or why there is none."""

    pid: str
    step: int | None
    result: SyscallResult | None = None
    error: str | None = None  # the tool raised, the run stopped, or no decision came in time
    needs_review: bool = False

    @property
    def ok(self) -> bool:
        """The tool ran and returned a value."""
        return self.error is None and self.result is not None and self.result.ok


@dataclass
class Options:
    """How the gateway drives its sessions' runs."""

    budgets: Mapping[str, float] | None = None
    scopes: tuple[str, ...] = ()
    speculative: bool = False
    approval_timeout: float = 3600.0
    progress_every: float = 5.0
    idle_after: float = 900.0  # a session's drive is stopped after this long without a call
    decide_flags: str = ""  # the store (and executor) options ``castor approve`` needs, for the progress text


def kept_unknown(cp: AgentCheckpoint) -> tuple[int, str, None] | None:
    """The call whose outcome is unknown that the run's header keeps at its next step, if any: (step, tool,
    None). An entry of an earlier step is stale (the step was journaled since)."""
    step = len(cp.syscall_log)
    for entry in reversed(cp.context_history):
        if isinstance(entry, dict) and entry.get("role") == UNKNOWN_ENTRY and entry.get("step") == step:
            return step, str(entry.get("tool")), None
    return None


class Session:
    """The run of one MCP session; its calls are issued one at a time, in order."""

    def __init__(self, kernel: Castor, pid: str, options: Options) -> None:
        self.kernel = kernel
        self.pid = pid
        self.options = options
        self.lock = asyncio.Lock()
        loop = asyncio.get_running_loop()  # a session is made by a call, in the gateway's loop
        self.ready: asyncio.Future[RunContext] = loop.create_future()
        self.hold: asyncio.Future[None] = loop.create_future()
        self.drive: runner.CastorTask | None = None
        self.last_used = time.monotonic()
        self.vetted = False  # the store's run of this pid was found to be none or a session's (refuse_foreign)
        # The call whose record the store lost once it acted (step, tool, arguments; None: any, as kept on the
        # run's header): its step is kept for its retry, which its claim settles (in doubt, for a human) or runs
        # again (a call nothing claims).
        self.unknown: tuple[int, str, dict[str, Any] | None] | None = None

    # --- the run's agent -------------------------------------------------------------------------

    def _agent(self) -> Callable[[], Awaitable[Any]]:
        """The run's agent: it replays the journal, hands its run context to the session, and holds the run
        open until the session ends it (``hold``: a ``Suspend`` to unwind it, or a result)."""
        ready: asyncio.Future[RunContext] = asyncio.get_running_loop().create_future()
        hold: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready, self.hold = ready, hold

        async def mcp_session() -> None:
            # The journal as the drive read it once it held the run (another gateway may have driven the run
            # while this one waited): each call served from it by the replay stage.
            ctx = active_run()
            for record in list(ctx.checkpoint.syscall_log):
                await tool(str(record.request["tool_name"]), **dict(record.request.get("arguments") or {}))
            self.unknown = self.unknown or kept_unknown(ctx.checkpoint)  # this gateway's, else one a gateway kept
            ready.set_result(ctx)
            await hold

        mcp_session.__name__ = AGENT  # the name its runs are stored under, which refuse_foreign checks
        return mcp_session

    async def _issue(self, ctx: RunContext, name: str, arguments: dict[str, Any], key: str | None) -> Outcome | None:
        """Issue one call in the run's context, from the caller's task (no hop to the drive's task: the
        syscall path is the same); None when it suspended the run."""
        step = ctx.next_step
        refused = self._unsettled(ctx.checkpoint, step, name, arguments)
        if refused is not None:
            return refused
        if key is not None:
            await self._remember(ctx.checkpoint, key, step)
        token = current_run.set(ctx)
        try:
            result = await tool(name, **arguments)
        except Suspend as suspended:  # unwind the agent with it: the drive persists the run as suspended
            self.hold.set_exception(suspended)
            return None
        except RunEnding as carried:
            # The call may have acted and its record could not be journaled: the drive stops with it (the run
            # resumable), the client is told, and the session goes on. The key still names the step: a
            # retry finds its record, or its claim in doubt.
            if outcome_unknown(carried):
                self.unknown = (step, name, dict(arguments))
                # Kept on the header too (its tool, not its arguments, which may be sensitive), saved as the
                # drive ends if the store takes it: a gateway started again keeps the step for the retry as well.
                ctx.checkpoint.context_history.append({"role": UNKNOWN_ENTRY, "step": step, "tool": name})
            self.hold.set_exception(carried)
            return Outcome(self.pid, step, error=f"{type(carried.error).__name__}: {carried.error}")
        except Exception as exc:  # the tool raised: the client gets it, the session goes on
            # The failed step is not journaled (a resume runs it again): end this drive so that the next call
            # drives the run again from the journal, at this step, rather than leave a hole in the journal.
            self._abandon(ctx.checkpoint, key, step)
            return Outcome(self.pid, step, error=f"{type(exc).__name__}: {exc}")
        except asyncio.CancelledError:  # the client gave up mid-call: the same, its step refunded
            self._abandon(ctx.checkpoint, key, step)
            raise
        finally:
            current_run.reset(token)
        log = ctx.checkpoint.syscall_log
        return Outcome(self.pid, step, result, needs_review=step < len(log) and log[step].needs_review)

    def _unsettled(self, cp: AgentCheckpoint, step: int, name: str, arguments: dict[str, Any]) -> Outcome | None:
        """Refuse a call that would take the step of a call whose outcome is unknown (``self.unknown``): that
        call would be journaled nowhere, and its retry, at a new step, would be asked of a human as a call
        that never ran (run again at once, speculative). Its retry takes the step; so does any call once the
        step is journaled (another gateway's drive settled it)."""
        if self.unknown is None:
            return None
        lost, tool_name, lost_arguments = self.unknown
        if lost != step or (name == tool_name and lost_arguments in (None, arguments)):
            self.unknown = None
            cp.context_history[:] = [e for e in cp.context_history
                                     if not (isinstance(e, dict) and e.get("role") == UNKNOWN_ENTRY)]
            return None
        return Outcome(self.pid, step, error=(
            f"{name} was not issued: step {step} of run {self.pid} holds {tool_name}, whose outcome is unknown "
            f"(it was called, and the store lost its record); retry {tool_name} with the same arguments first: "
            "its retry is answered from what the store holds, asks a human if it may have run, or runs it if "
            "nothing claimed it"
        ))

    def _abandon(self, cp: AgentCheckpoint, key: str | None, step: int) -> None:
        """End the drive after a call that left no record; its key no longer names the step (another call
        will take it), which the drive's end saves with the header."""
        if key is not None:
            cp.context_history[:] = [
                e for e in cp.context_history
                if not (isinstance(e, dict) and e.get("role") == KEY_ENTRY and e.get("key") == key)
            ]
        self.hold.cancel()

    async def _remember(self, cp: AgentCheckpoint, key: str, step: int) -> None:
        """Keep ``key -> step`` on the run's header before the call is issued, so a gateway started again
        answers a retry from the journal instead of running the call a second time."""
        cp.context_history.append({"role": KEY_ENTRY, "key": key, "step": step})
        await self.kernel.backend.runs.save(cp)

    # --- driving ---------------------------------------------------------------------------------

    async def _start(self) -> runner.CastorTask:
        """Drive the run again (or for the first time) from what the store holds once the drive is claimed
        (``runner.start`` reads the run then, not before)."""
        new = await self.kernel.backend.runs.load(self.pid) is None
        return await runner.start(
            self.kernel.services, self._agent(), pid=self.pid,
            speculative=self.options.speculative if new else None, scopes=self.options.scopes if new else None,
            default_budgets=dict(self.options.budgets or self.kernel.budgets), default_scopes=self.kernel.scopes,
        )

    async def call(self, name: str, arguments: dict[str, Any], key: str | None = None,
                   progress: Progress | None = None) -> Outcome:
        """Issue one call through the run; wait for a human if it is gated."""
        async with self.lock:
            self.last_used = time.monotonic()
            if not self.vetted:  # before anything of the run is read out to the client
                refuse_foreign(await self.kernel.backend.runs.load(self.pid), self.pid)
                self.vetted = True
            try:
                return await self._call(name, arguments, key, progress)
            finally:
                self.last_used = time.monotonic()

    async def _call(self, name: str, arguments: dict[str, Any], key: str | None, progress: Progress | None) -> Outcome:
        answered = await self._answered(key, name, arguments)
        if answered is not None:
            return answered
        while True:
            refused = await self._driven(name, arguments)
            if refused is not None:
                return refused
            drive = self.drive
            assert drive is not None  # _driven started one
            if not self.ready.done():
                gave_up = await self._await_drive(drive, name, arguments, key, progress)
                if gave_up is not None:
                    return gave_up
            if self.ready.done():
                if await self._taken_over(self.ready.result(), drive):
                    continue  # driven again once the process that took the run over lets it go
                outcome = await self._issue(self.ready.result(), name, arguments, key)
                if outcome is not None:
                    return outcome
            cp = await self._settle(drive)
            if cp.status != "SUSPENDED_FOR_HITL":
                stopped = f"run {self.pid} stopped: {cp.status} {cp.error or ''}".strip()
                return Outcome(self.pid, None, error=stopped)
            step = cp.pending_step if cp.pending_step is not None else len(cp.syscall_log)
            if not await self._wait_decision(step, name, progress):
                return Outcome(self.pid, step, error=(
                    f"no decision on {name} (run {self.pid}, step {step}) within "
                    f"{self.options.approval_timeout:g} s; it still waits in `castor approvals`: retry the "
                    "same call later (same run, same idempotency key) to receive its outcome"
                ))

    async def _driven(self, name: str, arguments: dict[str, Any]) -> Outcome | None:
        """Make sure a drive of the run is under way (settling one that ended, or was told to: a failed or
        cancelled call, a drive another process took over); an ``Outcome`` if the call may not be issued."""
        if self.drive is not None and (self.drive.done or self.hold.done()):
            await self._settle(self.drive)
        if self.drive is None:
            refused = await self._check_waiting(name, arguments)
            if refused is not None:
                return refused
            self.drive = await self._start()
        return None

    async def _await_drive(self, drive: runner.CastorTask, name: str, arguments: dict[str, Any], key: str | None,
                           progress: Progress | None) -> Outcome | None:
        """Wait for the drive to reach the client's call; None once it has (or stopped). A drive first waits
        for its claim while another process drives the run (another gateway's session of it, a ``castor
        resume``): meanwhile a retried call that process journals is answered from the journal, and a call
        still waiting after ``approval_timeout`` is told why, its drive given up before it touched the run."""
        started = time.monotonic()
        either: set[asyncio.Future[Any]] = {self.ready, drive.task}
        while True:
            await asyncio.wait(either, timeout=self.options.progress_every,
                               return_when=asyncio.FIRST_COMPLETED)
            if self.ready.done() or drive.task.done():
                return None
            answered = await self._answered(key, name, arguments)
            waited = time.monotonic() - started
            if answered is None and waited < self.options.approval_timeout:
                if progress is not None:
                    await progress(waited, f"run {self.pid} is driven by another process; {name} waits for it to "
                                           f"let go (waited {waited:.0f} s)")
                continue
            drive.preempt("another process drives the run")
            await self._settle(drive)
            return answered or Outcome(self.pid, None, error=(
                f"run {self.pid} is driven by another process (another gateway's session of it, or a castor "
                f"resume) and was not let go within {self.options.approval_timeout:g} s; {name} was not issued: "
                "retry it later (same run, same idempotency key), or send the run's calls to the gateway that "
                "drives it"
            ))

    async def _taken_over(self, ctx: RunContext, drive: runner.CastorTask) -> bool:
        """Whether this gateway stalled longer than its drive's lease and another process took the run over
        meanwhile: then its drive ends, writing nothing (not even the call's key, which would save the run
        as this gateway last saw it over what the other wrote), and the call waits for a drive of its own."""
        if ctx.drive is None:
            return False
        try:
            await ctx.drive.check()
        except StaleLeaseError:
            self.hold.cancel()
            await self._settle(drive)
            return True
        return False

    async def _settle(self, drive: runner.CastorTask) -> AgentCheckpoint:
        """The checkpoint a finished drive left; its exception is the run's, already persisted."""
        try:
            return await drive
        except BaseException:
            return drive.checkpoint
        finally:
            if self.drive is drive:
                self.drive = None

    async def _answered(self, key: str | None, name: str, arguments: dict[str, Any]) -> Outcome | None:
        """A retried call whose step is journaled: its recorded answer, without running anything (an error if
        the key names another call: a key is one call's)."""
        if key is None:
            return None
        backend = self.kernel.backend
        header = await backend.runs.load(self.pid)
        if header is None:
            return None
        steps = [
            int(e["step"]) for e in header.context_history
            if isinstance(e, dict) and e.get("role") == KEY_ENTRY and e.get("key") == key  # not the MMU's messages
        ]
        if not steps:
            return None
        record = await backend.journal.get(self.pid, steps[-1])
        if record is None:
            return None  # it waits for a decision (or never ran): issue it at its step
        spec = self.kernel.tools.find(name)
        same = record.request.get("tool_name") == name and (
            (spec is not None and bool(spec.sensitive)) or record.request.get("arguments") == arguments
        )  # a sensitive argument is journaled as a digest: the tool's name has to do
        if not same:
            return Outcome(self.pid, steps[-1], error=(
                f"idempotency key {key!r} was given to another call (step {steps[-1]}: "
                f"{record.request.get('tool_name')}); a key names one call"
            ))
        return Outcome(self.pid, steps[-1], wrap(record.response), needs_review=record.needs_review)

    async def _check_waiting(self, name: str, arguments: dict[str, Any]) -> Outcome | None:
        """A run that waits for a decision takes only the call that waits: a decision answers one call,
        and another call issued at its step must not inherit it."""
        header = await self.kernel.backend.runs.load(self.pid)
        if header is None or header.status != "SUSPENDED_FOR_HITL" or not header.pending_hitl:
            return None
        waiting = header.pending_hitl
        if waiting.get("tool_name") == name and dict(waiting.get("arguments") or {}) == arguments:
            return None
        return Outcome(self.pid, header.pending_step, error=(
            f"run {self.pid} waits for a decision on {waiting.get('tool_name')} (step {header.pending_step}); "
            "retry that call with the same arguments to receive its outcome"
        ))

    async def _wait_decision(self, step: int, name: str, progress: Progress | None) -> bool:
        """Wait in the approval store, telling the client every ``progress_every`` seconds."""
        approvals = self.kernel.backend.approvals
        started = time.monotonic()
        deadline = started + self.options.approval_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if progress is not None:
                waited = time.monotonic() - started
                command = " ".join(part for part in ("castor approve", self.pid, self.options.decide_flags) if part)
                await progress(waited, f"{name} waits for a human: {command} (waited {waited:.0f} s)")
            if await approvals.wait(self.pid, step, timeout=min(left, self.options.progress_every)) is not None:
                return True

    async def close(self, reason: str = "MCP session closed") -> None:
        """Stop the run's drive: it is stored ``PREEMPTED`` and a later session resumes it."""
        drive, self.drive = self.drive, None
        if drive is not None and not drive.done:
            drive.preempt(reason)
        if drive is not None:
            with contextlib.suppress(BaseException):  # the preemption itself, or how the drive ended (persisted)
                await drive
