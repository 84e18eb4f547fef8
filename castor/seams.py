"""The five seams the kernel talks through, and the values that cross them.

The kernel imports only this module to reach state and execution. A backend is a bundle of the four
state seams (``Backend``; derive one from another with ``dataclasses.replace``, which keeps what it
says of its store, such as ``answers_inline``); an executor runs a tool call somewhere. Optional
protocols say what a part may also do: ``JournalBinding`` (an executor), ``Closeable`` (a state seam),
``Settling`` (a budget store).
The kernel's own extension point, the interceptors of its syscall handler chain, is
``castor.kernel.context.Interceptor``. Implementations: ``memory`` (tests, the Python API's default),
``sqlite`` (embedded default of the CLI), ``redis`` (the fleet).

One value stands for a tool call wherever it goes: ``ToolCall``. The kernel's in-flight ``Syscall`` is
one, the executor is handed it, the fleet's wire format is its encoding (``castor.fleet.wire``:
the worker decodes it back), a pending approval is one plus when and why it waits, and its ``record``
method is the one builder of the step's journal record, on the coordinator and on the worker alike.

Every method is a coroutine, so a backend may do I/O; the memory one simply never awaits.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from castor._sealing import DataKey
from castor.checkpoint import AgentCheckpoint, StepFailure, SyscallRecord, new_record

DecisionOutcome = Literal["approve", "reject", "modify"]


@dataclass(slots=True)
class ToolCall:
    """One tool call: the one value every seam hands on (kernel, executor, wire, worker, journal, approvals).

    ``arguments`` are the agent's, as it called the tool; the journal's request holds them (its sensitive
    values as keyed digests: ``journaled_arguments``). ``checked`` are the same arguments as the tool's
    schema checked them: what the tool runs with (None until checked: then ``arguments`` are run). The
    other fields are what the journal's record of the step says besides its response, so whoever runs
    the call (the kernel, or a worker that journals itself) builds the same record with ``record``.

    ``attempt`` numbers the approval rounds of the step: 0 normally; a step whose worker was lost mid-call
    (in doubt) opens round ``attempt + 1``, so an earlier approval never authorizes running it again.
    """

    run_id: str
    step: int
    tool_name: str
    arguments: dict[str, Any]
    _: KW_ONLY
    attempt: int = 0
    checked: dict[str, Any] | None = None
    decided_by: str | None = None  # the human who decided the step (approved it, or rejected it)
    was_hitl: bool = False
    needs_review: bool = False
    review_reason: str | None = None
    charged: Mapping[str, float] | None = None  # the step's cost, drawn from the budgets before it ran
    # The run's total usage after this step, on every USAGE_STRIDE-th step, for a record built where the
    # total is unknown (a worker): the kernel sets it before it sends the call, when every earlier step is
    # journaled (with earlier calls still in flight it cannot know it: the record has none, and usage_of
    # sums further back).
    usage: dict[str, float] | None = None
    # When the call finished: set by whoever journaled its record (a worker: its reply says when), so the
    # kernel's copy of the record is the journaled one; otherwise the moment ``record`` builds it.
    finished_at: float | None = None

    @property
    def effect_id(self) -> str:
        """The call's effect: one per step of a run, whatever the round."""
        return f"{self.run_id}:{self.step}"

    def journaled_arguments(self) -> dict[str, Any]:
        """The arguments as the journal's request keeps them (the kernel's calls digest sensitive values;
        a call read off the wire carries them digested already)."""
        return self.arguments

    @property
    def request(self) -> dict[str, Any]:
        """The request as journaled: the tool and its arguments."""
        return {"tool_name": self.tool_name, "arguments": self.journaled_arguments()}

    def record(self, response: Any, child: AgentCheckpoint | None = None) -> SyscallRecord:
        """The journal record of this call answered with ``response``: the one builder of a step's
        record, used by the kernel and by the worker that journals a fleet call (a join's record carries
        the child)."""
        finished_at = self.finished_at
        return new_record(  # its fields in order (was_hitl to usage): keywords cost every step a match of ten
            {"tool_name": self.tool_name, "arguments": self.journaled_arguments()},  # self.request, one call less
            response,
            self.was_hitl,
            self.needs_review,
            self.review_reason,
            child,
            self.charged,  # type: ignore[arg-type]  # a tool's cost mapping, never mutated: shared
            self.decided_by,
            time.time() if finished_at is None else finished_at,
            self.usage,
        )


Call = ToolCall
"""The name ``ToolCall`` had when an executor was handed a shape of its own."""


@dataclass(slots=True)
class PendingApproval(ToolCall):
    """A call waiting for a human: the ``ToolCall`` (its arguments' sensitive values encrypted, since an
    approval may execute it in another process) and when it was asked, until when, and why."""

    created_at: float
    expires_at: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """A human's answer to a pending call. The first decision on a call wins."""

    run_id: str
    step: int
    outcome: DecisionOutcome
    by: str
    at: float
    reason: str = ""
    attempt: int = 0  # the approval round it decides; the store stamps the pending round's number


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One line of ``castor ps``: enough to list runs without loading their journals."""

    pid: str
    status: str
    agent: str
    parent_pid: str | None
    pending_tool: str | None
    steps: int
    created_at: float
    updated_at: float
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class Charge:
    """The outcome of a budget charge: ``ok`` or the first resource that was short."""

    ok: bool
    short: str | None = None
    remaining: float = 0.0


DRIVE_STEP = -1
"""The position whose claim is a run's drive (no step has it): one process drives a run at a time."""


@dataclass(frozen=True, slots=True)
class StepClaim:
    """The answer to a claim on a step: who executes it.

    ``claimed``: the caller holds it now and runs the call. ``journaled``: the step has its record; that
    record is the result. ``held``: ``holder`` (``<host>:<pid>:<token>``) claimed it for round ``attempt``
    and has not journaled it; ``expired`` says its lease ran out (it stopped renewing: gone, or hung).
    """

    state: Literal["claimed", "journaled", "held"]
    holder: str = ""
    attempt: int = 0
    expired: bool = False


@runtime_checkable
class Journal(Protocol):
    """The step cache: one write-once record per (run, step), plus an audit list of failures.

    A step whose call must run at most once (a decided or destructive one) is *claimed* before it runs:
    the claim is taken atomically with a look at the journal, so two processes driving one run never
    both execute it. A claim has a lease its holder renews while the call runs.
    """

    async def append(self, run_id: str, step: int, record: SyscallRecord) -> None:
        """Write the record of ``step``; ``JournalConflictError`` if that step has one already."""

    async def get(self, run_id: str, step: int) -> SyscallRecord | None:
        """The record of ``step``, or None."""

    async def history(self, run_id: str) -> list[SyscallRecord]:
        """Every record of the run in step order, a fork's shared prefix included."""

    async def length(self, run_id: str) -> int:
        """How many steps the run has journaled."""

    async def fork(self, parent_id: str, child_id: str, at_step: int) -> None:
        """Make ``child_id`` start with the parent's first ``at_step`` records, without copying them.

        Atomic: ``JournalConflictError`` if the child has a journal of its own or is another fork; the same
        fork made again is a no-op (a forker that stopped before storing its fork leaves only this pointer,
        which a later fork completes). Whose fork it is, is decided by ``RunStore.create``."""

    async def record_failure(self, run_id: str, failure: StepFailure) -> None:
        """Journal a tool failure for audit (not cached: the step runs again on resume)."""

    async def failures(self, run_id: str) -> list[StepFailure]:
        """The run's failures, oldest first."""

    async def delete(self, run_id: str) -> None:
        """Forget the run's journal."""

    async def claim(
        self, run_id: str, step: int, attempt: int, holder: str, lease: float, *, replace: str = "",
        lapsed_only: bool = False,
    ) -> StepClaim:
        """Claim ``step`` for approval round ``attempt``: ``claimed`` unless the step is journaled or another
        holder has it for this round or a later one (``replace`` names a holder whose claim may be taken
        over; with ``lapsed_only``, only while its lease has run out: a holder that renewed it since it was
        seen lapsed keeps it). The lease ends ``lease`` seconds after the claim, by the store's clock."""

    async def renew_claim(self, run_id: str, step: int, holder: str, lease: float) -> bool:
        """Extend ``holder``'s lease on the step; False if it holds it no more."""

    async def release_claim(self, run_id: str, step: int, holder: str) -> None:
        """Drop ``holder``'s claim on the step (the call ended without a record, or its record is in)."""


@runtime_checkable
class BudgetStore(Protocol):
    """Depletable budgets: per run, and shared scopes that many runs draw from. Charges are atomic.

    A store whose ``charge`` of nothing always succeeds may say so with a false class attribute
    ``empty_charges_checked``: the kernel then skips such charges (a call no budget limits). Without the
    attribute, every call is charged, its cost empty or not (a fenced store checks its lease there).
    """

    async def open_run(self, run_id: str, limits: Mapping[str, float], used: Mapping[str, float]) -> None:
        """Set the run's limits and what it has used so far (a resume or fork brings its usage)."""

    async def charge(
        self, run_id: str, step: int, cost: Mapping[str, float], scopes: Sequence[str] = ()
    ) -> Charge:
        """Draw ``cost`` from the run and every scope, all or nothing; charging a step twice is a no-op."""

    async def can_afford(self, run_id: str, cost: Mapping[str, float], scopes: Sequence[str] = ()) -> Charge:
        """Whether ``charge`` would succeed now, without charging."""

    async def refund(self, run_id: str, step: int) -> None:
        """Give back what ``step`` was charged; idempotent."""

    async def remaining(self, run_id: str, resource: str, scopes: Sequence[str] = ()) -> float:
        """What the run may still spend on ``resource`` (``inf`` where nothing limits it)."""

    async def close_run(self, run_id: str) -> None:
        """Drop the run's ledger (its usage lives on in its journal)."""

    async def set_scope(self, scope: str, limits: Mapping[str, float]) -> None:
        """Create a shared scope or change its limits (usage kept)."""

    async def top_up(self, scope: str, amounts: Mapping[str, float]) -> None:
        """Raise a scope's limits by ``amounts``."""

    async def reset_scope(self, scope: str) -> None:
        """Set a scope's usage back to zero."""

    async def read_scope(self, scope: str) -> dict[str, tuple[float, float]]:
        """``{resource: (limit, used)}`` of a scope; ``{}`` if it does not exist."""


@runtime_checkable
class Settling(Protocol):
    """Optional for a budget store (the memory, SQLite and Redis ones have it): settle a step's charge to
    what it used. A model call reserves the most it may cost and settles to the usage the provider
    reported (``castor.kernel.model``); a store without it is refunded and charged again instead (not
    atomic)."""

    async def settle(
        self, run_id: str, step: int, actual: Mapping[str, float], scopes: Sequence[str] = ()
    ) -> None:
        """Replace what ``step`` was charged by ``actual`` in every ledger it drew from, atomically; a step
        not charged (or refunded) is left alone; a ledger reset or reopened since keeps its new period."""


@runtime_checkable
class ApprovalStore(Protocol):
    """Pending calls and the human decisions on them."""

    async def request(self, pending: PendingApproval) -> None:
        """Record a call waiting for a decision (again for the same step and round: no-op).

        A request whose ``attempt`` is higher than the step's decided round opens a new round: the old
        decision stops counting (``decision`` returns None until the new round is decided).
        """

    async def decide(self, decision: Decision) -> Decision:
        """Record a decision on the step's open round (stamped with its ``attempt``) and return it;
        ``AlreadyDecidedError`` if the round was decided, ``NothingPendingError`` if nothing waits."""

    async def decision(self, run_id: str, step: int) -> Decision | None:
        """The decision on the step's current round, if there is one."""

    async def decided_request(self, run_id: str, step: int) -> PendingApproval | None:
        """The request the step's current decision answered, kept once decided (None while it waits).

        A worker of an insecure development fleet (no secret) checks an unsigned task against it: an
        approval authorizes that tool with those arguments in that round, nothing else.
        """

    async def pending(self, run_id: str | None = None) -> list[PendingApproval]:
        """Calls still waiting, oldest first (of one run, or of every run)."""

    async def wait(self, run_id: str, step: int, timeout: float | None = None) -> Decision | None:
        """Wait for the decision on a step (None after ``timeout``)."""

    async def clear(self, run_id: str) -> None:
        """Forget the run's approvals."""


@runtime_checkable
class RunStore(Protocol):
    """Run headers (a checkpoint without its journal) for resume, ``ps`` and ``inspect``."""

    async def save(self, checkpoint: AgentCheckpoint, *, reopen: str | None = None) -> None:
        """Store the checkpoint's header: status, budgets, pending call, result, spec.

        A finished run (COMPLETED, FAILED) keeps its end: a save over it writes nothing and raises
        ``RunFinishedError`` (atomically with the write: two processes' saves cannot both pass), so a late
        saver never moves the run back. Only ``reopen`` equal to the stored status lets the save through:
        a resume the user asked for of a run they saw finished (``castor resume`` of a FAILED run).
        """

    async def create(self, checkpoint: AgentCheckpoint) -> None:
        """Store a new run's header as ``save`` does, once: ``RunExistsError`` if the store holds another run
        of that pid, checked atomically with the write, so of processes creating one pid at once (two forks
        at one step) exactly one succeeds. The very same header again is a no-op: a creator's retry after a
        lost reply (the Redis store repeats a call whose connection dropped) is not told it lost."""

    async def load(self, pid: str) -> AgentCheckpoint | None:
        """The header (``syscall_log`` empty) or None if no such run."""

    async def list(self, status: str | None = None, limit: int = 100, offset: int = 0) -> list[RunSummary]:
        """Runs, newest first, optionally of one status."""

    async def delete(self, pid: str) -> None:
        """Forget the run."""


@runtime_checkable
class Executor(Protocol):
    """Runs a tool call: in this process, or as a task on the tool's worker pool.

    The executor runs ``call.checked`` (``call.arguments`` if the call was not checked). One whose
    ``writes_journal`` is true journals the step's record itself (``call.record``, write-once, before it
    reports the result) and sets ``call.finished_at`` to the journaled record's; the kernel then builds
    the same record with ``call.record`` and only appends it to the in-memory checkpoint.
    """

    writes_journal: bool

    def execute(self, call: ToolCall) -> Awaitable[Any]:
        """An awaitable of the call's result; it raises what the tool raised."""

    async def close(self) -> None:
        """Release threads, connections and reply readers."""


@runtime_checkable
class JournalBinding(Protocol):
    """Optional for an executor: one that reads the journal itself (the Celery executor, when a worker's
    reply is late) is handed the kernel's journal when the kernel is built."""

    def bind_journal(self, journal: Journal) -> None:
        """Use ``journal`` to look up steps the executor dispatched."""


@runtime_checkable
class Ready(Protocol):
    """Optional for a state seam: one whose server must be checked before runs are driven on it (Redis: it
    must not evict keys) does so in ``ready``, raising ``ConfigError`` if it cannot keep Castor's promises."""

    async def ready(self) -> None:
        """Check the server, once."""


@runtime_checkable
class Closeable(Protocol):
    """Optional for a state seam: one that holds connections closes them with the backend."""

    async def close(self) -> None:
        """Release the connections."""


@dataclass
class Backend:
    """A bundle of the four state seams, all of one technology."""

    journal: Journal
    budgets: BudgetStore
    approvals: ApprovalStore
    runs: RunStore
    url: str = "memory://"
    durable: bool = False
    # True when every operation completes without waiting on the network (memory, SQLite): sync APIs
    # such as ``Castor.reject`` may then drive it to completion inside a running event loop.
    answers_inline: bool = True
    # Seals sensitive arguments in this store (castor._sealing); None: a random key of the process.
    data_key: DataKey | None = None
    # True when runs on this store are driven under leases another process may take over (a fleet
    # coordinator's fenced store): a non-idempotent call is then claimed before it runs
    # (castor.kernel.claims), so the drive that takes the run over finds it in doubt instead of running
    # it again.
    leased: bool = False
    # True when the user asked this store for at most once on every non-idempotent call of an embedded
    # run (``?at_most_once=1`` in its URL): each is claimed before it runs, as on a leased store, so a
    # process that dies mid-call leaves the step in doubt for a human instead of running it again on resume.
    at_most_once: bool = False
    _ready = False  # ``ready`` checked it (not a field: ``dataclasses.replace`` makes a backend to check again)

    async def ready(self) -> None:
        """Check, once, that the store can keep Castor's promises before a run is driven or a decision applied
        on it (``Ready``); ``ConfigError`` if not."""
        if self._ready:
            return
        for part in (self.journal, self.budgets, self.approvals, self.runs):
            if isinstance(part, Ready):
                await part.ready()
        self._ready = True

    async def close(self) -> None:
        """Close connections the backend holds."""
        for part in (self.journal, self.budgets, self.approvals, self.runs):
            if isinstance(part, Closeable):
                await part.close()
