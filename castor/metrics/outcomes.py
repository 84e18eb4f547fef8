"""What became of a syscall, as one word of a closed set: a metric's ``outcome`` label, a span's attribute.

No Prometheus import here: ``castor.tracing`` uses it without the metrics extra.
"""

from __future__ import annotations

from typing import Any

from castor.errors import InDoubtError
from castor.kernel.context import Suspend

# The status of a response the kernel answered itself -> the outcome label.
_ANSWERED = {
    "VALIDATION_ERROR": "validation_error",
    "INSUFFICIENT_CAPABILITY": "budget_denied",
    "HITL_REJECTED": "rejected",
    "HITL_MODIFIED": "modified",
}


def outcome_of(response: Any) -> str:
    """The outcome label of a syscall that returned ``response``."""
    if type(response) is dict:
        return _ANSWERED.get(response.get("status"), "ok")  # type: ignore[arg-type]
    return "ok"


def failure_of(exc: BaseException) -> str:
    """The outcome label of a syscall that raised ``exc``."""
    if isinstance(exc, Suspend):
        # An in-doubt step suspends for a human from inside the InDoubtError's handler.
        return "in_doubt" if isinstance(exc.__context__, InDoubtError) else "suspended"
    return "in_doubt" if isinstance(exc, InDoubtError) else "error"
