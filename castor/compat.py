"""Names of castor-kernel 0.5.1's ``castor.__all__`` that Castor's design spells differently.

Code written for 0.5.1 imports every one of them from ``castor``. Where Castor has an equivalent, the
name is it or a thin adapter over it: ``SyscallGate`` (in ``castor.registry``), ``CheckpointStore`` and
``MemoryCheckpointStore`` (a store ``Castor(store=...)`` takes), ``SuspendInterrupt``, ``SyscallRequest``,
``SyscallResponse``, ``AgentRegistryProtocol``. Where it has none yet, the name still imports, and any use
of it (calling, subclassing, ``isinstance``) raises ``UnsupportedError`` naming what to use instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal, NoReturn, Protocol, runtime_checkable

from pydantic import BaseModel

from castor._context import Suspend
from castor._decisions import run_now
from castor._errors import UnsupportedError
from castor.backends import open_backend
from castor.checkpoint import AgentCheckpoint
from castor.kernel import Castor
from castor.seams import Backend

SuspendInterrupt = Suspend
"""The signal that unwinds an agent suspended for approval (a ``BaseException`` here, so an agent's
``except Exception`` does not swallow it)."""


class SyscallRequest(BaseModel):
    """A tool call as castor-kernel 0.5.1 described it; Castor journals ``{"tool_name", "arguments"}``."""

    caller_pid: str
    tool_name: str
    arguments: dict[str, Any]


class SyscallResponse(BaseModel):
    """A kernel answer as castor-kernel 0.5.1 described it; agents receive these fields as a dict."""

    status: Literal[
        "SUCCESS", "VALIDATION_ERROR", "HITL_MODIFIED", "HITL_REJECTED", "SUSPENDED", "INSUFFICIENT_CAPABILITY"
    ]
    result_payload: Any | None = None
    feedback_message: str | None = None
    human_feedback: str | None = None


@runtime_checkable
class AgentRegistryProtocol(Protocol):
    """What ``Castor(agent_registry=...)`` needs: the agent function called ``name``."""

    def get(self, name: str) -> Callable[..., Any]:
        """The agent called ``name``."""


class CheckpointStore(Backend):
    """castor-kernel 0.5.1's checkpoint store over a store URL: ``Castor(store=CheckpointStore(url))``.

    Its synchronous ``save`` / ``load`` / ``delete`` / ``list_pids`` complete in place for stores that
    answer without waiting (memory, SQLite); for Redis, use the kernel's async ``save`` / ``aload``.
    """

    def __init__(self, db_url: str = "sqlite:///castor.db") -> None:
        backend = open_backend(db_url)
        super().__init__(**{f.name: getattr(backend, f.name) for f in dataclasses.fields(Backend)})
        self._kernel: Castor | None = None

    def _castor(self) -> Castor:
        if self._kernel is None:
            self._kernel = Castor(tools=[], store=self)
        return self._kernel

    def save(self, checkpoint: AgentCheckpoint) -> None:
        """Persist the checkpoint, header and journal."""
        run_now(self._castor().save(checkpoint), "CheckpointStore.save()")

    def load(self, pid: str) -> AgentCheckpoint:
        """The checkpoint of ``pid``; ``RunNotFoundError`` (a ``KeyError``) if there is none."""
        return run_now(self._castor().aload(pid), "CheckpointStore.load()")

    def delete(self, pid: str) -> None:
        """Forget the run ``pid``: its header, journal and approvals."""

        async def forget() -> None:
            await self.runs.delete(pid)
            await self.journal.delete(pid)
            await self.approvals.clear(pid)

        run_now(forget(), "CheckpointStore.delete()")

    def list_pids(self) -> list[str]:
        """Every stored run's pid."""

        async def every() -> list[str]:
            pids: list[str] = []
            while batch := await self.runs.list(limit=500, offset=len(pids)):
                pids += [run.pid for run in batch]
            return pids

        return run_now(every(), "CheckpointStore.list_pids()")

    def write_wal(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not provided: there is no separate write-ahead log."""
        raise UnsupportedError(_NO_WAL)

    complete_wal = abandon_wal = write_wal


_NO_WAL = (
    "CheckpointStore has no write-ahead log here: Castor journals each call write-once as it completes "
    "and refunds what it could not journal; read the journal as checkpoint.syscall_log"
)


class MemoryCheckpointStore(CheckpointStore):
    """castor-kernel 0.5.1's in-process store: Castor's memory store, what ``Castor()`` uses by default."""

    def __init__(self) -> None:
        super().__init__("memory://")


class Unsupported(type):
    """The type of a castor-kernel 0.5.1 name Castor has no equivalent for yet: calling it, subclassing it
    or testing ``isinstance`` against it raises ``UnsupportedError`` naming what to use instead."""

    instead: str

    def __call__(cls, *args: Any, **kwargs: Any) -> NoReturn:
        raise UnsupportedError(cls.instead)

    def __instancecheck__(cls, instance: Any) -> NoReturn:
        raise UnsupportedError(cls.instead)

    def __subclasscheck__(cls, subclass: Any) -> NoReturn:
        raise UnsupportedError(cls.instead)


def unsupported(name: str, instead: str) -> Unsupported:
    """A placeholder for castor-kernel 0.5.1's ``name``: its uses raise ``UnsupportedError(instead)``."""

    message = f"castor.{name} (castor-kernel 0.5.1) is not provided: {instead}"

    def refuse_subclass(cls: type, **kwargs: Any) -> None:
        raise UnsupportedError(message)

    namespace = {
        "__doc__": f"castor-kernel 0.5.1's {name}, not provided by Castor: {instead}.",
        "__module__": __name__,
        "__init_subclass__": classmethod(refuse_subclass),
        "instead": message,
    }
    return Unsupported(name, (), namespace)


_BUDGETS = (
    "budgets are kept by the kernel's store; pass budgets=, default_budgets= or costs= to Castor (budgets= to "
    "run()) and read them with checkpoint.budget_remaining(resource) or castor.lib.budget(resource)"
)
_MMU = "the context-window MMU is not in Castor yet; keep the conversation in the agent (castor.lib.conversation)"
_LLM = (
    "pass the model as Castor(llm=fn, llm_cost=..., llm_resource=...): it runs as the tool llm_inference, "
    "and agents call castor.lib.chat()"
)

CapabilityManager = unsupported("CapabilityManager", _BUDGETS)
BudgetProtocol = unsupported("BudgetProtocol", _BUDGETS)
HITLHandler = unsupported(
    "HITLHandler", "decide through the kernel: kernel.approve(cp), kernel.reject(cp, reason), "
    "kernel.modify(cp, feedback) or await kernel.decide(cp, decision, feedback)"
)
AgentRunner = unsupported("AgentRunner", "run agents with Castor(...).run(agent) or run_async(agent)")
InMemoryJournal = unsupported(
    "InMemoryJournal", "a run's journal is checkpoint.syscall_log; the store's journal is kernel.backend.journal "
    "(the castor.seams.Journal seam)"
)
JournalProtocol = unsupported(
    "JournalProtocol", "a store implements the castor.seams.Journal seam, bundled in a castor.seams.Backend"
)
CheckpointStoreProtocol = unsupported(
    "CheckpointStoreProtocol", "Castor(store=...) takes a store URL, a castor.CheckpointStore or a "
    "castor.seams.Backend (the Journal, BudgetStore, ApprovalStore and RunStore seams)"
)
GateProtocol = unsupported(
    "GateProtocol", "a custom gate is not supported: Castor(gate=) takes castor.SyscallGate(registry); "
    "declare tools with tools= and @castor_tool"
)
ToolMetadata = unsupported(
    "ToolMetadata", "declare a tool with @castor_tool(consumes=, cost_per_use=, destructive=, requires_hitl=, "
    "timeout_seconds=) or Castor(costs=, destructive=); a registered tool is castor.registry.ToolSpec "
    "(ToolRegistry.get(name))"
)
CastorMessage = unsupported("CastorMessage", _MMU)
MMU = unsupported("MMU", _MMU)
MMUProtocol = unsupported("MMUProtocol", _MMU)
LLMSyscall = unsupported("LLMSyscall", _LLM)
StreamingLLMSyscall = unsupported("StreamingLLMSyscall", "streaming LLM calls are not supported yet; " + _LLM)
