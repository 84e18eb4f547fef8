"""The coordinator: takes runs off the fleet's queue and drives them, a slot per run it drives.

Four loops share one event loop: the *taker* moves a pid off the queue (BLMOVE onto this coordinator's
taking list, so a crash mid-take loses nothing) and leases it; the *heartbeat* renews every lease in one
round trip and registers the coordinator; the *waker* reads the decision and control streams (XREAD BLOCK)
and queues decided runs; the *sweeper* queues runs whose lease ran out and what dead coordinators took.
A run that suspends for a human is unwound and parked: it holds no slot, no coroutine, no memory here.
A run another process drives embedded (its drive claim) is not leased: it stays on the taking list, tried
again every second until that drive ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import random
import socket
from dataclasses import dataclass, field
from typing import Any

from castor.backends.redis import keys
from castor.errors import BackendUnavailable, CastorError, StaleLeaseError
from castor.fleet.background import stop_tasks
from castor.seams import Backend

from ._allowed import AllowedCode
from ._fence import Fences, fenced
from ._kernels import DrainGate, ExecutorFactory, Kernels
from ._ops import FleetOps
from ._runs import RunDriver

log = logging.getLogger("castor.coordinator")


@dataclass
class CoordinatorConfig:
    """How one coordinator runs: where the fleet is, its name, its slots, its lease and drain times."""

    url: str
    prefix: str = "castor"
    name: str = ""
    concurrency: int = 200
    lease: float = 15.0
    grace: float = 30.0
    allow_code_change: bool = False
    allowed: AllowedCode | None = None  # the agents and tools it may import (None: whatever a run names)
    max_takeovers: int = 3  # a run taken over more times in a row is quarantined (stored FAILED)
    store_options: dict[str, Any] = field(default_factory=dict)  # the Redis backend's (approval_ttl, ...)
    context_budget: int = 0  # tokens of a run's conversation (castor.mmu, pages in Redis); 0: no MMU

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"{socket.gethostname()}-{os.getpid()}"
        if "/" in self.name:
            raise CastorError(f"coordinator name {self.name!r} may not contain '/'")
        if self.concurrency < 1 or self.lease <= 0 or self.grace < 0 or self.max_takeovers < 0:
            raise CastorError("concurrency must be >= 1, lease > 0, grace >= 0 and max_takeovers >= 0")

    @property
    def lease_ms(self) -> int:
        """The lease time in milliseconds."""
        return int(self.lease * 1000)


def fleet_mmu(config: CoordinatorConfig) -> Any:
    """The context-window MMU of a coordinator's kernels: pages in the fleet's Redis, so whichever
    coordinator drives a run next finds them (None without a ``context_budget``)."""
    if not config.context_budget:
        return None
    from castor.mmu import MMU
    from castor.mmu.drivers.redis import RedisDriver

    return MMU(budget=config.context_budget, driver=RedisDriver(config.url, prefix=config.prefix))


class Coordinator:
    """One coordinator process's scheduling state."""

    def __init__(self, config: CoordinatorConfig, backend: Backend, executor: ExecutorFactory | None = None) -> None:
        self.config = config
        self.ops = FleetOps(config.url, config.prefix, config.name)
        self.fences = Fences(self.ops.redis, config.prefix, config.name)
        self.gate = DrainGate()
        self.backend = backend
        self.kernels = Kernels(
            fenced(backend, self.fences), executor, self.gate, mmu=fleet_mmu(config), allowed=config.allowed
        )
        self.driver = RunDriver(self)
        self.slots = asyncio.Semaphore(config.concurrency)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.stops: dict[str, list[Any]] = {}  # pid -> [reason, payload] handed to drive on cancel
        self.taken = 0
        self.stopping = asyncio.Event()
        self._closing = False  # the loops end at their next turn (a cancellation alone may be lost)
        self._loops: list[asyncio.Task[None]] = []
        self._errands: set[asyncio.Task[None]] = set()  # short tasks (_spawn), each dropped once done
        self.driven_elsewhere: dict[str, str] = {}  # pid -> the holder of its embedded drive, while it waits

    @property
    def name(self) -> str:
        """This coordinator's name (in fencing tokens, ``ps`` and ``coordinators``)."""
        return self.config.name

    # --- life cycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Join the fleet and drive runs until ``drain`` is called; then drain and leave."""
        reclaimed = await self.ops.reclaim_own()
        if reclaimed:
            log.info("%s: queued %d runs a previous process of this name took", self.name, reclaimed)
        await self._register("running")
        cursor = await self.ops.stream_tail()
        self._loops = [
            asyncio.create_task(self._take_loop(), name="take"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._wake_loop(cursor), name="wake"),
            asyncio.create_task(self._sweep_loop(), name="sweep"),
            asyncio.create_task(self.driver.catch_up(), name="catch-up"),
        ]
        log.info("%s: coordinating (concurrency %d, lease %gs)", self.name, self.config.concurrency, self.config.lease)
        await self.stopping.wait()
        await self._drain()

    def drain(self) -> None:
        """Stop taking runs and leave (what SIGTERM does)."""
        if not self.stopping.is_set():  # said at once: the drain may take up to the grace
            n = len(self.tasks)
            log.info("%s: stopping: no new runs; %d run%s draining, for up to %gs", self.name, n,
                     "" if n == 1 else "s", self.config.grace)
        self.stopping.set()

    async def _drain(self) -> None:
        take = self._loops[0]
        take.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await take
        await self.ops.reclaim_own()  # a pid moved onto the taking list but not leased goes back
        with contextlib.suppress(BackendUnavailable):
            await self._register("draining")
        self.gate.draining = True
        idle = await self.gate.wait_idle(self.config.grace)
        n = len(self.tasks)
        log.info(
            "%s: draining %d run%s (%s)%s", self.name, n, "" if n == 1 else "s",
            "in-flight steps finished" if idle else f"grace of {self.config.grace:g}s ran out",
            f": {' '.join(self.tasks)}" if self.tasks else "",
        )
        for pid, task in list(self.tasks.items()):
            self.stop_run(pid, "drained", {"coordinator": self.name}, task)
        if self.tasks:
            _, stuck = await asyncio.wait(list(self.tasks.values()), timeout=max(self.config.lease, 5.0))
            for task in stuck:  # never hang the exit: their leases run out and others take the runs over
                out = io.StringIO()
                task.print_stack(file=out)
                log.error("%s: %s did not stop when drained:\n%s", self.name, task.get_name(), out.getvalue())
        self._closing = True
        for task in await stop_tasks([*self._loops[1:], *self._errands], max(self.config.lease, 5.0)):
            log.error("%s: %s did not stop; leaving it behind", self.name, task.get_name())
        with contextlib.suppress(BackendUnavailable):
            await self.ops.unregister()
        await self.kernels.close()
        await self.ops.close()
        log.info("%s: drained", self.name)

    def stop_run(self, pid: str, reason: str, payload: dict[str, Any] | None, task: Any = None) -> None:
        """Stop a run this coordinator drives; it ends ``PREEMPTED`` with ``reason`` at its next await."""
        task = task or self.tasks.get(pid)
        if task is None or task.done():
            return
        self.stops.setdefault(pid, [])[:] = [reason, payload]
        task.cancel()

    # --- loops ----------------------------------------------------------------------------------

    async def _take_loop(self) -> None:
        while not self.stopping.is_set():
            await self.slots.acquire()
            try:
                pid = await self.ops.take(timeout=2)
            except BackendUnavailable as exc:
                self.slots.release()
                log.warning("%s: %s", self.name, exc)
                await asyncio.sleep(1.0)
                continue
            except BaseException:
                self.slots.release()
                raise
            if pid is None:
                self.slots.release()
                continue
            await self._lease(pid)

    async def adopt_refused(self) -> None:
        """Drive the runs set aside that this coordinator may take: refused for a code change (with
        --allow-code-change), or whose code another coordinator could not import and this one can."""
        if self.stopping.is_set():
            return
        for pid in await self.ops.refused_runs():
            if not await self.driver.may_adopt(pid) or not await self.ops.claim_refused(pid):
                continue
            log.info("%s: taking over %s, set aside by another coordinator", self.name, pid)
            await self.slots.acquire()
            await self._lease(pid)

    async def _lease(self, pid: str) -> None:
        token = self.ops.new_token()
        try:
            status, detail = await self.ops.acquire(pid, token, self.config.lease_ms, self.config.max_takeovers)
        except BackendUnavailable as exc:
            self.slots.release()
            log.warning("%s: could not lease %s: %s", self.name, pid, exc)
            return
        if status != "driven":
            self.driven_elsewhere.pop(pid, None)
        if status not in ("ok", "quarantine"):
            self.slots.release()
            if status == "cancelled":
                self._spawn(self.driver.cancel_queued(pid))
            elif status == "driven":
                self._spawn(self._lease_later(pid, *detail))
            return
        takeovers = int(detail or 0)
        if takeovers:
            log.warning("%s: taking run %s over (takeover %d in a row; at most %d before it is quarantined)",
                        self.name, pid, takeovers, self.config.max_takeovers)
        self.taken += 1
        self.fences.tokens[pid] = token
        previous = self.tasks.get(pid)
        if previous is not None:
            self.stops[pid] = []  # the old drive keeps its own stop list; this one starts with a fresh one
        quarantine = takeovers if status == "quarantine" else 0
        self.tasks[pid] = asyncio.create_task(self._serve(pid, token, previous, quarantine), name=f"run {pid}")

    async def _lease_later(self, pid: str, holder: str, left: float) -> None:
        """Another process drives ``pid`` embedded (a host program or an MCP gateway on the fleet's Redis,
        under its drive claim): a coordinator driving it too would run its calls twice. The pid stays on this
        coordinator's taking list (queued again if this process dies or drains) and is acquired again, at
        least every second, until that drive ends or its lease runs out."""
        if self.driven_elsewhere.get(pid) != holder:
            self.driven_elsewhere[pid] = holder
            log.info("%s: run %s is driven by another process (%s); leasing it once that drive ends",
                     self.name, pid, holder)
        await asyncio.sleep(min(max(left, 0.05), 1.0))
        if self.stopping.is_set():
            return  # the drain puts the taking list back on the queue
        await self.slots.acquire()
        if self.stopping.is_set():
            self.slots.release()
            return
        await self._lease(pid)

    async def _serve(self, pid: str, token: str, previous: asyncio.Task[None] | None, quarantine: int) -> None:
        self.fences.bind(pid, token)  # every write of this drive carries its own token
        me = asyncio.current_task()
        try:
            if previous is not None:
                await self._outlive(pid, previous)
            if quarantine:
                await self.driver.quarantine(pid, token, quarantine - 1)
            else:
                await self.driver.serve(pid, token)
        except StaleLeaseError as exc:
            log.warning("%s: lost run %s: %s", self.name, pid, exc)
        except asyncio.CancelledError:
            stop = self.stops.get(pid) if self.tasks.get(pid) is me else None  # a stale drive hands nothing on
            if not stop:
                raise
            with contextlib.suppress(CastorError):
                await self.driver.stopped_early(pid, token, str(stop[0]))
        except Exception:
            log.exception("%s: run %s stopped on an error", self.name, pid)
        finally:
            current = self.tasks.get(pid) is me
            if current:
                self.tasks.pop(pid, None)
                self.stops.pop(pid, None)
            if self.fences.tokens.get(pid) == token:
                self.fences.tokens.pop(pid, None)
            if current or pid not in self.tasks:
                self.kernels.forget(pid)  # never the live state of a newer drive of the run here
            self.slots.release()

    async def _outlive(self, pid: str, old: asyncio.Task[None]) -> None:
        """One drive per run per process: this process leased ``pid`` again (its lease had run out, e.g. over
        a Redis outage) while its previous drive of it still goes; that one ends before this one starts.
        Its writes are refused already (its token is not the lease's). A call it has in flight is let
        finish: its worker journals the result, which this drive then replays rather than sending the
        step a second time. Then it is cancelled."""
        log.warning("%s: run %s leased again while its previous drive here still goes: ending that one first",
                    self.name, pid)
        try:
            while not old.done() and self.gate.busy(pid):
                await asyncio.wait({old}, timeout=0.05)
            old.cancel()
            _, stuck = await asyncio.wait({old}, timeout=max(self.config.lease, 5.0))
        except asyncio.CancelledError:  # this drive is stopped too: the old one goes with it
            old.cancel()
            await asyncio.wait({old}, timeout=max(self.config.lease, 5.0))
            raise
        if stuck:  # it can write nothing and dispatch nothing (every call is charged, fenced, first)
            log.error("%s: the previous drive of %s did not stop when cancelled; going on without it",
                      self.name, pid)

    def _let_go(self, pid: str, task: asyncio.Task[None]) -> None:
        """A drive lost its lease: stop it once no call of it is in flight here (a call's result, which
        its worker journals, is worth waiting for: whoever drives the run next replays it)."""

        async def stop_when_idle() -> None:
            while not task.done() and self.gate.busy(pid):
                await asyncio.wait({task}, timeout=0.05)
            if self.tasks.get(pid) is task:
                self.stop_run(pid, "lease lost", {"coordinator": self.name})

        self._spawn(stop_when_idle())

    async def _heartbeat_loop(self) -> None:
        every = self.config.lease / 3
        while not self._closing:
            try:
                await self._beat()
            except BackendUnavailable as exc:
                log.warning("%s: heartbeat failed: %s", self.name, exc)
            await asyncio.sleep(every)

    async def _beat(self) -> None:
        """Renew the leases this coordinator holds and stop the drives whose lease another took; say it lives."""
        held = dict(self.fences.tokens)
        lost = await self.ops.renew(held, self.config.lease_ms)
        for pid in lost:
            task = self.tasks.get(pid)
            # A drive drops its token before it releases its lease (RunDriver.release): a lease still held
            # here under the same token was taken, not given back.
            if self.fences.tokens.get(pid) == held[pid]:
                log.warning("%s: lease on %s lost; stopping it here", self.name, pid)
                self.fences.tokens.pop(pid, None)
                if task is not None:
                    self._let_go(pid, task)
        await self._register("draining" if self.stopping.is_set() else "running")

    async def _register(self, state: str) -> None:
        await self.ops.register(
            max(self.config.lease_ms, 3000),
            {
                "host": socket.gethostname(), "pid": os.getpid(), "concurrency": self.config.concurrency,
                "driving": len(self.tasks), "taken": self.taken, "state": state,
            },
        )

    async def _wake_loop(self, cursor: dict[str, str]) -> None:
        decisions = keys.decision_stream(self.config.prefix)
        while not self._closing:
            try:
                events = await self.ops.read_events(cursor, block_ms=5000)
            except BackendUnavailable as exc:
                log.warning("%s: decision stream: %s", self.name, exc)
                await asyncio.sleep(1.0)
                continue
            for stream, fields in events:
                pid = fields.get("run", "")
                if stream == decisions:
                    await self.ops.unpark(pid)
                elif fields.get("cmd") == "cancel" and pid in self.tasks:
                    self.stop_run(pid, "cancelled", {"by": fields.get("by", "")})

    async def _sweep_loop(self) -> None:
        # Often enough that a dead coordinator's runs resume within its lease time plus half a second;
        # a sweep is two short scripts, whatever the number of runs parked or leased.
        every = min(self.config.lease / 4, 0.5)
        while not self._closing:
            await asyncio.sleep(every * random.uniform(0.8, 1.2))  # coordinators spread their sweeps
            try:
                taken_over = await self.ops.requeue_expired()
                buried = await self.ops.bury_dead()
                await self.adopt_refused()
            except BackendUnavailable as exc:
                log.warning("%s: sweep failed: %s", self.name, exc)
                continue
            if taken_over:
                log.info("%s: leases ran out on %d runs; queued them: %s", self.name, len(taken_over), taken_over[:5])
            for name, n in buried.items():
                log.info("%s: coordinator %s is gone; queued %d runs it had taken", self.name, name, n)

    def _spawn(self, coro: Any) -> None:
        # Held until done, then dropped: a list of every errand ever run would grow with every lost lease.
        task = asyncio.create_task(coro)
        self._errands.add(task)
        task.add_done_callback(self._errand_done)

    def _errand_done(self, task: asyncio.Task[None]) -> None:
        self._errands.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so that asyncio does not report it when the task is collected
