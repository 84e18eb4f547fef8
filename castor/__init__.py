"""Castor: a secure execution layer for LLM agents.

Agents request tools through ``castor.lib``; the operator builds a ``Castor`` kernel (``castor.kernel``)
that validates, budgets, gates, executes and journals every call, keeping state in a backend and running
tools through an executor (the seams of ``castor.seams``). ``import castor`` loads neither redis nor celery.
Every name of castor-kernel 0.5.1's ``castor.__all__`` imports from here (see ``castor.compat``).
"""

from castor.agents import AgentNotFoundError, AgentRegistry, castor_agent, default_agent_registry
from castor.checkpoint import AgentCheckpoint, Capability, StepFailure, SyscallRecord
from castor.compat import (
    MMU,
    AgentRegistryProtocol,
    AgentRunner,
    BudgetProtocol,
    CapabilityManager,
    CastorMessage,
    CheckpointStoreProtocol,
    GateProtocol,
    HITLHandler,
    InMemoryJournal,
    JournalProtocol,
    LLMSyscall,
    MMUProtocol,
    StreamingLLMSyscall,
    SuspendInterrupt,
    SyscallRequest,
    SyscallResponse,
    ToolMetadata,
)
from castor.errors import (
    AlreadyDecidedError,
    BackendUnavailable,
    CastorError,
    ConfigError,
    InDoubtError,
    InvalidPidError,
    InvalidValueError,
    JournalConflictError,
    NothingPendingError,
    OutcomeUnknownError,
    RemoteToolError,
    ReplayDivergenceError,
    RunBusyError,
    RunEndedError,
    RunFinishedError,
    RunNotFoundError,
    StaleLeaseError,
    TaskRefusedError,
    ToolTimeoutError,
    UnknownToolError,
    UnsupportedError,
)
from castor.kernel import Castor, CastorTask, CastorWarning
from castor.lib.proxy import SyscallProxy
from castor.policies import auto_approve, auto_reject, interactive
from castor.registry import SyscallGate, castor_tool
from castor.results import SyscallResult
from castor.scheduler.persistence import CheckpointStore, MemoryCheckpointStore
from castor.summary import ApprovedStep, ExecutionSummary, FlaggedStep

__version__ = "0.6.0"

__all__ = [
    "MMU",
    "AgentCheckpoint",
    "AgentNotFoundError",
    "AgentRegistry",
    "AgentRegistryProtocol",
    "AgentRunner",
    "AlreadyDecidedError",
    "ApprovedStep",
    "BackendUnavailable",
    "BudgetProtocol",
    "Capability",
    "CapabilityManager",
    "Castor",
    "CastorError",
    "CastorMessage",
    "CastorTask",
    "CastorWarning",
    "CheckpointStore",
    "CheckpointStoreProtocol",
    "ConfigError",
    "ExecutionSummary",
    "FlaggedStep",
    "GateProtocol",
    "HITLHandler",
    "InDoubtError",
    "InMemoryJournal",
    "InvalidPidError",
    "InvalidValueError",
    "JournalConflictError",
    "JournalProtocol",
    "LLMSyscall",
    "MMUProtocol",
    "MemoryCheckpointStore",
    "NothingPendingError",
    "OutcomeUnknownError",
    "RemoteToolError",
    "ReplayDivergenceError",
    "RunBusyError",
    "RunEndedError",
    "RunFinishedError",
    "RunNotFoundError",
    "StaleLeaseError",
    "StepFailure",
    "StreamingLLMSyscall",
    "SuspendInterrupt",
    "SyscallGate",
    "SyscallProxy",
    "SyscallRecord",
    "SyscallRequest",
    "SyscallResponse",
    "SyscallResult",
    "TaskRefusedError",
    "ToolMetadata",
    "ToolTimeoutError",
    "UnknownToolError",
    "UnsupportedError",
    "__version__",
    "auto_approve",
    "auto_reject",
    "castor_agent",
    "castor_tool",
    "default_agent_registry",
    "interactive",
]
