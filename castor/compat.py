"""Names of castor-kernel 0.5.1's ``castor.__all__`` that Castor's design spells differently.

Code written for 0.5.1 imports every one of them from ``castor``. Where Castor has an equivalent, the
name is it or a thin adapter over it: ``SyscallGate`` (in ``castor.registry``), ``CheckpointStore`` and
``MemoryCheckpointStore`` (in ``castor.scheduler.persistence``), ``CapabilityManager`` (the kernel's own
budgets), ``MMU``, ``MMUProtocol`` and ``CastorMessage`` (``castor.mmu``), ``SuspendInterrupt``,
``SyscallRequest``, ``SyscallResponse``, ``AgentRegistryProtocol``, ``LLMSyscall`` and
``StreamingLLMSyscall`` (``castor.llm.wrapper``: a tool, a streamed model call). Where it has none yet, the name still
imports, and any use of it (calling, subclassing, ``isinstance``) raises ``UnsupportedError`` naming what
to use instead. ``legacy_tools`` honours or refuses 0.5.1's other ``Castor()`` options.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NoReturn, Protocol, runtime_checkable

from castor.checkpoint import Capability
from castor.errors import UnsupportedError
from castor.kernel.context import Suspend
from castor.llm.wrapper import LLMSyscall as LLMSyscall  # re-exported: thin adapters over model calls
from castor.llm.wrapper import StreamingLLMSyscall as StreamingLLMSyscall
from castor.mmu.core import MMU as MMU  # re-exported: 0.5.1's names, now Castor's own (castor.mmu)
from castor.mmu.messages import CastorMessage as CastorMessage
from castor.mmu.protocol import MMUProtocol as MMUProtocol
from castor.registry import SyscallGate
from castor.registry import ToolMetadata as ToolMetadata  # re-exported: 0.5.1 names, one import place
from castor.results import SyscallRequest as SyscallRequest
from castor.results import SyscallResponse as SyscallResponse

SuspendInterrupt = Suspend
"""The signal that unwinds an agent suspended for approval (a ``BaseException`` here, so an agent's
``except Exception`` does not swallow it)."""


@runtime_checkable
class AgentRegistryProtocol(Protocol):
    """What ``Castor(agent_registry=...)`` needs: the agent function called ``name``."""

    def get(self, name: str) -> Callable[..., Any]:
        """The agent called ``name``."""


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


class CapabilityManager:
    """castor-kernel 0.5.1's budget manager. Budgets here are kept by the kernel's store, so the use kept is
    the default one: ``Castor(capability_manager=CapabilityManager())`` means the kernel's own budgets.
    ``create_capabilities`` builds a checkpoint's capabilities; its methods that track usage in capability
    dicts (``check``, ``deduct``, ``refund``, ``delegate``, ``reclaim``) are not provided."""

    def create_capabilities(self, specs: Mapping[str, float]) -> dict[str, Capability]:
        """One ``Capability`` per budget, nothing used yet (what ``AgentCheckpoint.capabilities`` holds)."""
        return {r: Capability(resource_type=r, max_budget=float(v)) for r, v in specs.items()}

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith("_"):  # copy, pickle and friends probe dunders: answer as any object would
            raise AttributeError(name)
        raise UnsupportedError(f"CapabilityManager.{name}() (castor-kernel 0.5.1) is not provided: {_BUDGETS}")


REFUSED = {
    "capability_manager": "Castor(capability_manager=...) takes only castor.CapabilityManager() (the kernel's own "
    "budgets): a custom budget manager is not supported; pass budgets=, default_budgets= or costs= to Castor",
    "roche": "Castor(roche=...) (sandboxed tools) is not supported: pass the sandbox's tools as tools=",
}


def legacy_tools(options: Mapping[str, Any]) -> list[Any]:
    """castor-kernel 0.5.1's other ``Castor()`` options, honoured or refused but never ignored.

    ``gate=SyscallGate(registry)`` gives the registry's tools; ``capability_manager=CapabilityManager()`` is
    the kernel's own budgets (``lodge=`` is the kernel's ``mmu=``); ``roche=`` and any other gate or budget
    manager raise ``UnsupportedError`` naming what to use instead.
    """
    unknown = set(options) - {"gate", *REFUSED}
    if unknown:
        raise TypeError(f"Castor() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    for name, why in REFUSED.items():
        value = options.get(name)
        # None / False are 0.5.1's defaults (nothing asked for); a plain CapabilityManager() is the default too.
        if value and not (name == "capability_manager" and type(value) is CapabilityManager):
            raise UnsupportedError(why)
    gate = options.get("gate")
    if gate is None:
        return []
    if not isinstance(gate, SyscallGate):
        raise UnsupportedError(
            f"Castor(gate=...) takes castor.SyscallGate(registry), not {type(gate).__name__}: a custom gate is "
            "not supported; declare tools with tools= and @castor_tool"
        )
    return list(gate.registry)  # its ToolSpecs: what register(ToolMetadata) stated stays
