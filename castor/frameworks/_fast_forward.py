"""Where a replayed framework loop may start: the last journaled model step of one tool-calling loop.

A resumed or forked run replays its agent from the journal. For a framework agent that means running the
framework's own loop over every journaled step, each model answer and tool result served from the journal:
correct, and as costly in CPU as the live loop was (the framework's loop is most of a step). A tool-calling
loop whose state is its conversation (LangGraph's ReAct agents) can instead start at its last journaled
model step with the conversation that step was asked with: the steps before it are the journal's already.

``landing`` walks the journal from the run's next step and finds that model step. It follows one loop: a
model step, exactly the tool steps its answer asked for (by name, in any order), then the next model step
of the same model, asked with the same tools and settings and with the previous request's messages as the
start of its own (the conversation is a request's ``messages``, LangChain's; the Agents SDK guard's
requests hold it as ``input``, and their settings may change once a tool was used: a ``tool_choice``
the SDK resets). It stops at an answer that asks for no tool (the loop ends there), where the journal
ends, or at anything else (another agent's call, a failed model call, a conversation that does not go on).
The framework guard rebuilds the conversation from the steps it returns and checks it against the
landing step's request before it starts there; the landing step's request is compared again when the
framework asks it, as every replayed step's is. ``start_late`` runs the loop from the landing step, and
from the loop's first step should the landing step be asked otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from castor.checkpoint import SyscallRecord
from castor.errors import ReplayDivergenceError
from castor.kernel.context import RunContext
from castor.kernel.model import is_model_step

T = TypeVar("T")
_log = logging.getLogger("castor.run")


@dataclass(frozen=True, slots=True)
class Landing:
    """A loop's journaled model steps, from the run's next step to the one a replay may start at."""

    steps: list[int]  # the loop's model steps, in order: the first is the run's next step, the last the landing
    records: list[SyscallRecord]  # their records

    @property
    def start(self) -> int:
        """The run's next step: the loop's first model step."""
        return self.steps[0]

    @property
    def step(self) -> int:
        """The step the replayed loop starts at: its last journaled model step."""
        return self.steps[-1]

    def requests(self) -> list[dict[str, Any]]:
        """Each model step's request, in order."""
        return [request_of(record) for record in self.records]


def request_of(record: SyscallRecord) -> dict[str, Any]:
    """A model step's request (its canonical JSON, as journaled)."""
    request = record.arguments.get("request")
    return request if isinstance(request, dict) else {}


def _model_request(record: SyscallRecord, model: str | None, key: str) -> dict[str, Any] | None:
    """The request of a model step answered (not failed) by ``model`` (any model, if None) whose ``key`` is
    a conversation; None for any other step."""
    request = record.request
    name = request.get("tool_name", "")
    if type(name) is not str:
        name = str(name)
    if not is_model_step(name) or (model is not None and name != model):
        return None
    if record.failure is not None or not isinstance(record.response, dict):
        return None
    arguments = request.get("arguments")
    asked = arguments.get("request") if isinstance(arguments, dict) else None
    return asked if isinstance(asked, dict) and isinstance(asked.get(key), list) else None


def _asked_tools(response: dict[str, Any]) -> list[str] | None:
    """The names of the tools an answer asked for, sorted (None: the answer's calls are not readable)."""
    calls = response.get("tool_calls")
    if not isinstance(calls, list):
        return None
    names = [c["name"] for c in calls if isinstance(c, dict) and isinstance(c.get("name"), str)]
    return sorted(names) if len(names) == len(calls) else None


def landing(ctx: RunContext, conversation: str = "messages", loose: frozenset[str] = frozenset()) -> Landing | None:
    """The journaled loop from the run's next step, when it has model steps past the first; else None (a
    live step, a held step, a call that is not a model step's: the loop runs from where it is).
    ``conversation``: the key of a request that holds its conversation; ``loose``: keys of a request that
    may change from step to step (the guard rebuilds what the landing step is asked with, and checks it).
    Each record is read once: its request found as it is checked, kept for the next step's comparison."""
    if ctx.unjournaled_failures or ctx.held_steps or ctx.suspended_at is not None:
        return None
    log = ctx.checkpoint.syscall_log
    start = ctx.next_step
    if start >= len(log):
        return None
    record = log[start]
    request = _model_request(record, None, conversation)
    if request is None:
        return None
    steps, records = [start], [record]
    model = record.tool_name
    at = start
    end = len(log)
    kept = loose | {conversation}  # what may differ from one request to the next
    while True:
        calls = record.response.get("tool_calls")
        if type(calls) is list and len(calls) == 1 and type(calls[0]) is dict:  # the usual step: one call
            name = calls[0].get("name")
            if not isinstance(name, str):
                break
            tools_end = at + 2
            if tools_end >= end or log[at + 1].tool_name != name:
                break
        else:
            asked = _asked_tools(record.response)
            if not asked:  # the model answered: the loop ends at this step
                break
            tools_end = at + 1 + len(asked)
            if tools_end >= end or sorted(log[s].tool_name for s in range(at + 1, tools_end)) != asked:
                break
        after = log[tools_end]
        following = _model_request(after, model, conversation)
        if following is None:
            break
        old, new = request[conversation], following[conversation]
        if len(new) <= len(old) or new[: len(old)] != old or (
                {k: v for k, v in request.items() if k not in kept}
                != {k: v for k, v in following.items() if k not in kept}):
            break  # not asked the same way (tools, settings; ``loose`` aside) with the conversation continued
        steps.append(tools_end)
        records.append(after)
        at, record, request = tools_end, after, following
    return Landing(steps, records) if len(steps) > 1 else None


async def start_late(
    ctx: RunContext, found: Landing, late: Callable[[], Awaitable[T]], whole: Callable[[], Awaitable[T]], *,
    what: str = "the agent", undo: Callable[[], None] | None = None,
) -> T:
    """``late()``: the framework's loop from ``found``'s landing step (the steps before it the journal's, not
    run). Should the framework ask that step otherwise than journaled (the state rebuilt for it is not the
    one the loop had: a prompt function that reads what the journal does not keep, a prompt changed since),
    ``undo()`` puts back what preparing the late start changed and ``whole()`` runs the loop from its first
    step, which reports a real divergence where it is."""
    _log.debug("run %s: %s starts at its journaled model step %d (steps %d-%d from the journal, not run)",
               ctx.run_id, what, found.step, found.start, found.step - 1)
    ctx.next_step = found.step
    try:
        return await late()
    except ReplayDivergenceError as error:
        if error.step != found.step or ctx.next_step != found.step + 1:
            raise
    _log.debug("run %s: step %d asked otherwise from the rebuilt state: %s runs from step %d",
               ctx.run_id, found.step, what, found.start)
    if undo is not None:
        undo()
    ctx.next_step = found.start
    return await whole()
