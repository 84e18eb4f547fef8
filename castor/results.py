"""The typed envelope an agent receives with ``Castor(structured_results=True)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

_DENIALS = {"VALIDATION_ERROR", "INSUFFICIENT_CAPABILITY", "HITL_REJECTED", "HITL_MODIFIED"}


@dataclass(frozen=True)
class SyscallResult:
    """A tool's value, or the reason the kernel answered instead of the tool (``resource``: the budget that
    ran out). Built as in castor-kernel 0.5.1: ``SyscallResult(status="HITL_REJECTED", feedback="no")``."""

    value: Any = None
    status: str = "OK"
    feedback: str | None = None
    resource: str | None = None

    @property
    def ok(self) -> bool:
        """The tool ran and returned ``value``."""
        return self.status == "OK"

    @property
    def rejected(self) -> bool:
        """A human rejected the call."""
        return self.status == "HITL_REJECTED"

    @property
    def modified(self) -> bool:
        """A human answered with feedback instead of running the call."""
        return self.status == "HITL_MODIFIED"

    @property
    def exhausted(self) -> bool:
        """The budget could not pay for the call."""
        return self.status == "INSUFFICIENT_CAPABILITY"

    @property
    def invalid(self) -> bool:
        """The arguments did not match the tool's parameters."""
        return self.status == "VALIDATION_ERROR"


def wrap(response: Any) -> SyscallResult:
    """Classify a raw response into the envelope."""
    if isinstance(response, dict):
        status = response.get("status")
        if status in _DENIALS:
            feedback = response.get("human_feedback", response.get("feedback_message"))
            return SyscallResult(None, str(status), feedback, response.get("resource"))
    return SyscallResult(response)


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
