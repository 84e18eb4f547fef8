"""Driving one leased run to its next stop, and what happens to it there.

``serve`` loads the run, refuses it if its code changed, rebuilds its kernel from its ``RunSpec``, replays
its journal and drives the agent with ``castor.fleet.driver.prepare`` / ``drive``. Where the run stops decides
where it goes: finished runs release their lease, suspended runs are parked (the lease released, the
pending step recorded; a decision queues them again), drained runs go back on the queue.

A run whose agent or tools this coordinator cannot import (a file or module missing here, as in a rolling
deploy where another coordinator has the new code) is set aside with the import error, not failed: it
waits, PREEMPTED, for a coordinator that can import it. Each coordinator tries each such run once
(``may_adopt``), when it starts or when the run is set aside; the code comes with a new process.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from castor.checkpoint import FINISHED, AgentCheckpoint
from castor.errors import BackendUnavailable, ConfigError, StaleLeaseError
from castor.fleet import driver
from castor.seams import Backend, Decision

from ._fence import Fences
from ._kernels import Kernels
from ._ops import FleetOps

log = logging.getLogger("castor.coordinator")


class Host(Protocol):
    """What a ``RunDriver`` uses of the coordinator that owns it (a protocol, so this module does not import
    the coordinator, which imports it)."""

    @property
    def name(self) -> str:
        """The coordinator's name (a property: the coordinator's is read-only)."""

    ops: FleetOps
    config: Any  # CoordinatorConfig: allow_code_change
    backend: Backend
    kernels: Kernels
    stops: dict[str, list[Any]]  # pid -> [reason, payload] handed to a drive on cancel
    fences: Fences  # tokens: pid -> the token of the lease this coordinator holds and renews

    async def adopt_refused(self) -> None:
        """Drive the runs set aside that this coordinator may take (``RunDriver.may_adopt``)."""

CODE_CHANGED = "code changed"
CODE_UNAVAILABLE = "code unavailable"


def waiting_round(header: AgentCheckpoint, step: int) -> int:
    """Which approval round of ``step`` the run waits on (a step reopened after a lost worker is round 1+)."""
    return header.in_doubt.get(step, 0)


def decides(decision: Decision | None, round_: int) -> bool:
    """Whether ``decision`` answers round ``round_`` (a decision of an earlier round does not)."""
    return decision is not None and decision.attempt >= round_


class RunDriver:
    """What a coordinator does with each run it leases."""

    def __init__(self, coordinator: Host) -> None:
        self.co = coordinator
        self.backend = coordinator.backend  # reads go to the store directly; writes go through the fence
        self.store = coordinator.kernels.backend
        self.tried: set[str] = set()  # runs set aside for code this process could not import: tried once

    async def release(self, pid: str, token: str, mode: str, step: int = -1) -> int:
        """Give the run's lease back (``FleetOps.release``), its renewal stopped first: a heartbeat renewing
        it a moment after would find it gone and stop this drive as one whose lease was taken, perhaps
        between parking the run and looking for a decision made meanwhile, which would then wake nobody."""
        tokens = self.co.fences.tokens
        if tokens.get(pid) == token:
            del tokens[pid]
        return await self.co.ops.release(pid, token, mode, step)

    async def serve(self, pid: str, token: str) -> None:
        """Drive the leased run to its next stop and release, park or requeue it."""
        header = await self.backend.runs.load(pid)
        if header is None or header.status in FINISHED:
            await self.release(pid, token, "done")
            return
        if header.status == "SUSPENDED_FOR_HITL" and header.pending_step is not None:
            step = header.pending_step
            if not decides(await self.backend.approvals.decision(pid, step), waiting_round(header, step)):
                await self._park(header, token)  # queued again without a decision: nothing to do yet
                return
        spec = header.spec
        if spec is None:
            await self._fail(header, token, "the run has no RunSpec: a coordinator cannot rebuild its kernel")
            return
        changed = driver.changed_files(spec)
        try:
            kernel = self.co.kernels.kernel_for(spec)
            agent = self.co.kernels.agent_for(spec)
        except ConfigError as exc:
            await self._set_aside(header, token, exc)
            return
        cp = await kernel.aload(pid)
        if changed:
            if cp.syscall_log and not self.co.config.allow_code_change:
                await self._refuse(cp, token, changed)
                return
            cp.spec = driver.restamp(spec)  # nothing to replay yet, or the operator allowed it
        ctx = await driver.prepare(kernel.services, agent, checkpoint=cp)
        stop = self.co.stops.setdefault(pid, [])
        try:
            cp = await driver.drive(ctx, agent, stop)
        except (StaleLeaseError, BackendUnavailable):
            raise  # the run's state may not be stored: its lease runs out and another coordinator replays it
        except Exception as exc:  # the agent raised; drive stored the run FAILED
            log.info("%s: run %s failed: %s: %s", self.co.name, pid, type(exc).__name__, exc)
            await self.release(pid, token, "done")
            return
        await self._after(cp, token, stop)

    async def quarantine(self, pid: str, token: str, takeovers: int) -> None:
        """The run was taken over more than ``max_takeovers`` times in a row, each driver dying without
        letting go of it (an agent or tool that kills the process driving it would take every coordinator
        down in turn): store it ``FAILED`` with the reason, its journal kept, and drive it no more."""
        header = await self.backend.runs.load(pid)
        if header is None or header.status in FINISHED:
            await self.release(pid, token, "done")
            return
        await self.store.budgets.close_run(pid)  # as a failed run's ledger is closed (its usage is journaled)
        await self._fail(header, token, f"quarantined: taken over {takeovers} times; its driver died each time")

    async def stopped_early(self, pid: str, token: str, reason: str) -> None:
        """The run was stopped before its agent started: hand it on as its stop reason says."""
        if reason == "drained":
            await self.release(pid, token, "requeue")
            log.info("%s: run %s handed back to the queue before it started", self.co.name, pid)
        elif reason == "cancelled":
            await self.release(pid, token, "done")
            await self.cancel_queued(pid)

    async def _after(self, cp: AgentCheckpoint, token: str, stop: list[Any]) -> None:
        reason = stop[0] if stop else None
        if cp.status == "SUSPENDED_FOR_HITL":
            await self._park(cp, token)
        elif cp.status == "PREEMPTED" and reason == "drained":
            await self.release(cp.pid, token, "requeue")
            log.info("%s: run %s handed back to the queue at step %d", self.co.name, cp.pid, len(cp.syscall_log))
        else:
            if reason == "cancelled":
                await self.backend.approvals.clear(cp.pid)
            await self.release(cp.pid, token, "done")

    async def _park(self, cp: AgentCheckpoint, token: str) -> None:
        step = cp.pending_step if cp.pending_step is not None else len(cp.syscall_log)
        round_ = waiting_round(cp, step)
        released = await self.release(cp.pid, token, "park", step)
        if released == 2:  # cancelled while it was driven
            await driver.mark_cancelled(self.backend, cp, "operator")
            await self.co.ops.forget_cancel(cp.pid)
        elif released == 1 and decides(await self.backend.approvals.decision(cp.pid, step), round_):
            await self.co.ops.unpark(cp.pid)  # decided before it was parked: nobody else will wake it

    async def _fail(self, header: AgentCheckpoint, token: str, error: str) -> None:
        log.error("%s: run %s: %s", self.co.name, header.pid, error)
        header.syscall_log = await self.backend.journal.history(header.pid)
        header.status = "FAILED"
        header.error = error
        header.updated_at = time.time()
        await driver.save_run(self.store, header)  # a run that ended meanwhile keeps its end
        await self.release(header.pid, token, "done")

    async def _refuse(self, cp: AgentCheckpoint, token: str, changed: list[str]) -> None:
        message = (
            f"refusing to resume run {cp.pid!r}: its code changed since it started ({', '.join(changed)}); "
            "replaying its journal with other code could diverge. Start a coordinator with "
            "--allow-code-change to resume it anyway"
        )
        await self._put_aside(cp, token, CODE_CHANGED, {"files": changed}, message)

    async def _set_aside(self, header: AgentCheckpoint, token: str, error: ConfigError) -> None:
        self.tried.add(header.pid)
        message = (
            f"coordinator {self.co.name} cannot import the code of run {header.pid!r}: {error}; the run waits "
            "for a coordinator that can (start one with the code: it takes the run over)"
        )
        header.syscall_log = await self.backend.journal.history(header.pid)  # a header comes without it
        await self._put_aside(header, token, CODE_UNAVAILABLE, {"coordinator": self.co.name, "error": str(error)},
                              message)

    async def _put_aside(
        self, cp: AgentCheckpoint, token: str, reason: str, payload: dict[str, Any], message: str
    ) -> None:
        """Store the run PREEMPTED for ``reason`` and set it aside (``FleetOps.refuse``) until a coordinator
        that may drive it takes it (``may_adopt``)."""
        log.error("%s: %s", self.co.name, message)
        cp.status = "PREEMPTED"
        cp.preemption_reason = reason
        cp.preemption_payload = payload
        cp.error = message
        cp.updated_at = time.time()
        await driver.save_run(self.store, cp)
        await self.co.ops.refuse(cp.pid, token, message)

    async def may_adopt(self, pid: str) -> bool:
        """Whether this coordinator takes a run another one set aside: one refused for a code change, with
        ``--allow-code-change``; one whose code another could not import, once this one imports it (tried
        once per process: a failed import does not fix itself)."""
        if pid in self.tried:  # judged before: the sweep asks again every half second
            return False
        header = await self.backend.runs.load(pid)
        if header is None or header.spec is None or header.preemption_reason != CODE_UNAVAILABLE:
            if not self.co.config.allow_code_change:
                self.tried.add(pid)
            return bool(self.co.config.allow_code_change)
        try:
            self.co.kernels.kernel_for(header.spec)
            self.co.kernels.agent_for(header.spec)
        except ConfigError as exc:
            self.tried.add(pid)
            log.info("%s: run %s waits for a coordinator with its code; not this one: %s", self.co.name, pid, exc)
            return False
        return True

    async def cancel_queued(self, pid: str) -> None:
        """A cancelled run came off the queue: store it as cancelled."""
        header = await self.backend.runs.load(pid)
        if header is not None and header.status not in FINISHED:
            await driver.mark_cancelled(self.backend, header, "operator")
        await self.co.ops.forget_cancel(pid)

    async def catch_up(self) -> None:
        """Queue parked runs decided while no coordinator listened; drive refused runs if allowed."""
        await self.co.adopt_refused()
        woken = 0
        for pid, step in (await self.co.ops.parked()).items():
            header = await self.backend.runs.load(pid)
            if header is None:
                continue
            if decides(await self.backend.approvals.decision(pid, step), waiting_round(header, step)):
                woken += await self.co.ops.unpark(pid)
        if woken:
            log.info("%s: queued %d parked runs decided while no coordinator listened", self.co.name, woken)
