"""Castor's exception tree (public: ``from castor.errors import ...``; the common ones are also in ``castor``).

Every error a Castor API raises on purpose is one of these; backend errors (sqlite3, redis, celery)
are translated at the boundary with ``raise ... from exc`` so callers never catch a driver's type.

    CastorError
    ├── ConfigError              bad tools, budgets, settings or CLI input, found at start-up
    │   ├── InvalidValueError    a setting, number or secret outside what is allowed (also ValueError; CLI exit 2)
    │   │   └── InvalidPidError  a pid outside the documented character set or length
    │   └── RunExistsError       a run created again under a pid the store holds (a second fork at a step)
    ├── UnknownToolError         the agent called a tool the kernel does not have   (also KeyError)
    ├── RunNotFoundError         no run with that pid in the store                  (also KeyError)
    ├── NothingPendingError      approve/reject/modify on a run with no pending call (also ValueError)
    │   └── AlreadyDecidedError  a second decision on the same call: none pends any more
    ├── ReplayDivergenceError    a resumed agent asked for another call than the journal holds
    ├── JournalConflictError     a second write of the same step (records are write-once)
    ├── RunEndedError            castor.lib used outside a run or after its run ended (also RuntimeError)
    ├── StaleLeaseError          a process that lost a run's lease tried to write to it
    ├── RunFinishedError         a save would move a finished run (COMPLETED, FAILED) out of its end
    ├── ToolTimeoutError         a tool ran past its deadline                        (also TimeoutError)
    ├── InDoubtError             a step was dispatched but its outcome is unknown (worker lost)
    ├── RemoteToolError          a tool raised on a worker; carries the original type name and message
    ├── TaskRefusedError         a worker refused a task (unknown tool, bad arguments, no authorization)
    ├── BackendUnavailable       the store (SQLite file, Redis) cannot be reached
    │   └── OutcomeUnknownError  ... once a call acted or went out: its run stops, resumable
    └── UnsupportedError         a castor-kernel 0.5.1 name or option Castor has no equivalent for yet;
                                 the message names what to use instead          (also NotImplementedError)

``CastorWarning`` (a ``UserWarning``) flags a configuration that works but is probably a mistake.

All of them pickle, so they cross process boundaries (coordinator, workers) unchanged.
"""

from __future__ import annotations

import time
from typing import Any


class CastorError(Exception):
    """Base of every error Castor raises on purpose."""

    # True when the failure is in the run's journal already: a worker that ran the tool journaled it.
    failure_journaled: bool = False

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructors do not survive the default pickling; rebuild from args + state.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[CastorError], args: tuple[Any, ...], state: dict[str, Any]) -> CastorError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class ConfigError(CastorError):
    """The operator's configuration (tools, budgets, settings, CLI input) is invalid."""


class InvalidValueError(ConfigError, ValueError):
    """A value outside what Castor allows: a setting out of its range, a sample or missing secret, a pid
    with characters it may not hold. The CLI exits 2 on it, as on a usage error."""


class InvalidPidError(InvalidValueError):
    """A pid outside ``castor._ids.PID_RULE``: 1 to 200 characters of letters, digits and ``_ . - : @ +``."""


class RunExistsError(ConfigError):
    """The store holds a run of that pid already: a second creation of it (two forks at one step at once, by
    any two processes) is refused, naming the run and what to do instead."""

    def __init__(self, pid: str, hint: str = "") -> None:
        self.pid = pid
        super().__init__(f"run {pid!r} exists already" + (f"; {hint}" if hint else ""))


class RunBusyError(ConfigError):
    """Another live process drives the run (``castor run`` or ``resume`` still going): what would write over
    it is refused, naming that process."""


class UnknownToolError(CastorError, KeyError):
    """The agent asked for a tool that is not registered with the kernel."""

    def __init__(self, name: str, known: list[str] | None = None) -> None:
        known = sorted(known or [])
        hint = f"; registered tools: {', '.join(known)}" if known else ""
        super().__init__(f"unknown tool {name!r}{hint}")
        self.tool_name = name

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class RunNotFoundError(CastorError, KeyError):
    """No run with the given pid exists in the store."""

    def __init__(self, pid: str) -> None:
        super().__init__(f"no run with pid {pid!r}")
        self.pid = pid

    def __str__(self) -> str:
        return str(self.args[0])


class NothingPendingError(CastorError, ValueError):
    """A decision was given for a run that has no pending call."""


class AlreadyDecidedError(NothingPendingError):
    """A pending call was decided already; the first decision wins, so no call waits any more.

    The message says so in the words of castor-kernel 0.5.1 callers match on ("has no pending call"),
    and names who decided it.
    """

    def __init__(
        self, run_id: str, step: int, outcome: str, by: str, *, at: float | None = None, reason: str = ""
    ) -> None:
        when = f" at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(at))}" if at is not None else ""
        why = f": {reason}" if reason else ""
        super().__init__(
            f"run {run_id!r} has no pending call at step {step}: it was decided already ({outcome} by {by}{when}{why})"
        )
        self.run_id = run_id
        self.step = step
        self.outcome = outcome
        self.by = by


class ReplayDivergenceError(CastorError):
    """A resumed agent asked for a different call than the journal recorded at that position."""

    def __init__(self, step: int, expected: dict[str, Any], actual: dict[str, Any]) -> None:
        super().__init__(
            f"replay divergence at step {step}: the journal holds {_call(expected)} "
            f"but the agent asked for {_call(actual)}; agent code must be deterministic between syscalls"
        )
        self.step = step
        self.expected = expected
        self.actual = actual


def _call(request: dict[str, Any]) -> str:
    return f"{request.get('tool_name')}({request.get('arguments')})"


class JournalConflictError(CastorError):
    """A step's record was written already; journal records are write-once."""


class RunEndedError(CastorError, RuntimeError):
    """castor.lib was used outside ``Castor.run()`` or after the run it belonged to ended."""


class StaleLeaseError(CastorError):
    """A process whose lease on a run expired tried to write to that run."""


class RunFinishedError(CastorError):
    """A plain save would move a run out of its end (COMPLETED, FAILED): the stored end stands.

    A late saver (a resume that suspended, a decision, a second driver) is told by this error and takes
    the stored record (``castor._terminal``); only a resume asked for explicitly reopens a finished run.
    """

    def __init__(self, pid: str, status: str) -> None:
        super().__init__(f"run {pid!r} is {status} in the store; a save does not move a finished run back")
        self.pid = pid
        self.status = status


class ToolTimeoutError(CastorError, TimeoutError):
    """A tool ran past its deadline."""


class InDoubtError(CastorError):
    """A step was dispatched but its outcome is unknown (the worker running it was lost)."""


class RemoteToolError(CastorError):
    """A tool raised on a worker; ``error_type`` and ``tool_message`` are what it raised there."""

    def __init__(self, error_type: str, message: str, *, tool_name: str = "") -> None:
        super().__init__(f"{error_type}: {message}" if message else error_type)
        self.error_type = error_type
        self.tool_message = message
        self.tool_name = tool_name


class TaskRefusedError(CastorError):
    """A worker refused a task without executing it: unknown tool, malformed or oversized arguments,
    or a destructive call without a valid approval."""


class BackendUnavailable(CastorError):
    """The state store (SQLite file, Redis) cannot be reached."""


class OutcomeUnknownError(BackendUnavailable):
    """The store went away once a call was handed on (its task published, its tool run): the call may have
    acted, and what it did can be neither recorded nor read now. The run stops, resumable, rather than tell
    the agent the call failed (an agent or a framework that goes past an error would make the call again):
    its next drive finds the step journaled, or in doubt, or runs it again as its tool allows."""


RUNS_ON = "castor_runs_on"
"""Set true on a ``CancelledError`` that stopped a call a worker runs, or may run, all the same (the drive was
cancelled, drained, or an agent's own timeout gave up on the call): its charge stands (the worker journals
its record with it). An attribute, not a subclass: ``asyncio.timeout`` knows a cancellation by its exact type."""


class UnsupportedError(CastorError, NotImplementedError):
    """Code used a castor-kernel 0.5.1 name or option that Castor has no equivalent for yet; the message
    names what to use instead."""


class CastorWarning(UserWarning):
    """A configuration that works but is probably not what the operator meant."""
