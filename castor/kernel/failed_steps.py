"""A step whose call raised, and which the run went past, is journaled: a replay raises the same error there.

A call that raises leaves its step without a record. If the run stops there (the error ends it), nothing
more is needed: a resume runs the step again, which is how a failed run is retried. But an agent may catch
the error and go on (every framework that hands a tool's error to its model does): later steps are then
journaled after a step with no record. The journal must not have a hole (records are journaled in step
order, and a replay serves step N from position N), so the failed step is journaled too, as a *failure
record*: the call's request, no response, and what it raised (``SyscallRecord.failure``). It is journaled
when the run goes past it (``RunContext.went_past``): before the agent's next call goes out, when a later
step that ran at the same time is journaled, when the run suspends at a later step, when the agent returns,
and when it fails with an error that is not the step's and was not raised while handling it; a failure the
run stopped at is not.

A replay of a failure record raises the error again rather than calling the tool, so the agent takes the
same path as the first time: the same exception class where it can be found again (a built-in one, or one
of a module already imported), with the same arguments and attributes, else an error of the same name
whose ``str`` and ``repr`` are the recorded ones. Frameworks hand the model ``str(error)`` or
``repr(error)``: the request that follows matches the journal.
"""

from __future__ import annotations

import builtins
import sys
from typing import Any

from castor.checkpoint import FAILURE_ARGUMENT_BYTES, SyscallRecord, new_record
from castor.errors import (
    CastorError,
    JournalConflictError,
    ReplayDivergenceError,
    RunEndedError,
    RunFinishedError,
    StaleLeaseError,
)

# Errors that say the run cannot go on, not what the step's call did: never a step's recorded outcome.
NOT_OUTCOMES = (ReplayDivergenceError, RunEndedError, RunFinishedError, StaleLeaseError, JournalConflictError)
_PLAIN = (str, int, float, bool, type(None))


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def describe(error: BaseException) -> dict[str, Any]:
    """What a failure record keeps of ``error``: its class, ``str``, ``repr``, and its arguments and
    attributes where they are plain JSON data. An error whose text passes ``FAILURE_ARGUMENT_BYTES`` keeps
    its text cut there and nothing else (a replay then raises the stand-in with the cut text)."""
    kind = type(error)
    message, text = str(error), repr(error)
    described: dict[str, Any] = {
        "error_type": kind.__qualname__, "module": kind.__module__,
        "message": message[:FAILURE_ARGUMENT_BYTES], "repr": text[:FAILURE_ARGUMENT_BYTES],
    }
    if len(message) + len(text) > FAILURE_ARGUMENT_BYTES:
        return described
    if _plain(error.args):
        described["args"] = list(error.args)
    attributes = {k: v for k, v in vars(error).items() if not k.startswith("__") and _plain(v)}
    if attributes and len(repr(attributes)) <= FAILURE_ARGUMENT_BYTES:
        described["attributes"] = attributes
    return described


def failure_record(request: dict[str, Any], error: BaseException, finished_at: float) -> SyscallRecord:
    """The journal record of a step whose call ``request`` raised ``error``."""
    return new_record(request, None, finished_at=finished_at, failure=describe(error))


class ReplayedFailure(CastorError):
    """A step's recorded error raised again on replay, when its own class cannot be made again: it has the
    original's class name, ``str`` and ``repr``."""

    def __init__(self, failure: dict[str, Any]) -> None:
        super().__init__(str(failure.get("message", "")))
        self.failure = failure

    def __str__(self) -> str:
        return str(self.failure.get("message", ""))

    def __repr__(self) -> str:
        return str(self.failure.get("repr", ""))


def _own_class(failure: dict[str, Any]) -> type[Exception] | None:
    module, name = failure.get("module"), str(failure.get("error_type", ""))
    owner: Any = builtins if module == "builtins" else sys.modules.get(str(module))  # never imports anything
    for part in name.split("."):
        owner = getattr(owner, part, None)
    return owner if isinstance(owner, type) and issubclass(owner, Exception) else None


def raised(failure: dict[str, Any]) -> Exception:
    """The error a failure record describes, made again."""
    kind = _own_class(failure)
    if kind is not None and "args" in failure:
        try:
            error = kind.__new__(kind)
            error.args = tuple(failure["args"])
            vars(error).update(failure.get("attributes", {}))
            if str(error) == failure.get("message") and repr(error) == failure.get("repr"):
                return error
        except Exception:  # a class that cannot be made this way: the stand-in below
            pass
    name = str(failure.get("error_type", "Error")).rsplit(".", 1)[-1]
    stand_in = type(name, (ReplayedFailure,), {"__module__": str(failure.get("module", __name__))})
    error = stand_in(failure)
    vars(error).update(failure.get("attributes", {}))
    return error
