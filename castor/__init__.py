"""Castor: a secure execution layer for LLM agents.

Agents request tools through ``castor.lib``; the operator builds a ``Castor`` kernel that validates,
budgets, gates, executes and journals every call. ``import castor`` loads neither redis nor celery.
"""

from castor._errors import (
    AlreadyDecidedError,
    BackendUnavailable,
    CastorError,
    ConfigError,
    InDoubtError,
    InvalidPidError,
    InvalidValueError,
    JournalConflictError,
    NothingPendingError,
    RemoteToolError,
    ReplayDivergenceError,
    RunEndedError,
    RunNotFoundError,
    StaleLeaseError,
    TaskRefusedError,
    ToolTimeoutError,
    UnknownToolError,
)
from castor._runner import CastorTask
from castor.agents import AgentNotFoundError, AgentRegistry, castor_agent, default_agent_registry
from castor.checkpoint import AgentCheckpoint, Capability, StepFailure, SyscallRecord
from castor.kernel import Castor, CastorWarning
from castor.lib.proxy import SyscallProxy
from castor.policies import auto_approve, auto_reject, interactive
from castor.registry import castor_tool
from castor.results import SyscallResult
from castor.summary import ApprovedStep, ExecutionSummary, FlaggedStep

__version__ = "0.6.0"

__all__ = [
    "AgentCheckpoint",
    "AgentNotFoundError",
    "AgentRegistry",
    "AlreadyDecidedError",
    "ApprovedStep",
    "BackendUnavailable",
    "Capability",
    "Castor",
    "CastorError",
    "CastorTask",
    "CastorWarning",
    "ConfigError",
    "ExecutionSummary",
    "FlaggedStep",
    "InDoubtError",
    "InvalidPidError",
    "InvalidValueError",
    "JournalConflictError",
    "NothingPendingError",
    "RemoteToolError",
    "ReplayDivergenceError",
    "RunEndedError",
    "RunNotFoundError",
    "StaleLeaseError",
    "StepFailure",
    "SyscallProxy",
    "SyscallRecord",
    "SyscallResult",
    "TaskRefusedError",
    "ToolTimeoutError",
    "UnknownToolError",
    "__version__",
    "auto_approve",
    "auto_reject",
    "castor_agent",
    "castor_tool",
    "default_agent_registry",
    "interactive",
]
