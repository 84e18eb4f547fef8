"""How the framework contract (``test_contract.py``) speaks to a framework: one ``FrameworkCase`` per framework.

The contract tells every framework the same story, in neutral words: a janitor agent asked to "clean up old
logs" searches the logs, deletes ``/tmp/old`` (the destructive tool) and says "done". ``SCRIPT`` is that
story as the model's turns; an adapter turns a script into its framework's scripted model and its agent,
and reads back what the model was asked. Each framework's adapter sits in its test file
(``tests/frameworks/test_<framework>.py``, ``CASES``), right after the scripted model it drives.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from castor import AgentCheckpoint, Castor

PROMPT = "clean up old logs"
# What every scripted model reports for each call (10 tokens in, 5 out), as Castor charges it, and how
# ``castor inspect`` prints the model's call to delete_file then.
USAGE = {"input_tokens": 10, "output_tokens": 5, "tokens": 15}
INSPECTED_CALL = 'calls delete_file({"path": "/tmp/old"}) [tool_calls] (tokens in 10 / out 5)'


@dataclass(frozen=True)
class Call:
    """A model turn that calls one tool."""

    name: str
    arguments: dict[str, Any]
    id: str


@dataclass(frozen=True)
class Final:
    """A model turn that ends the run with its answer."""

    text: str


Turn = Call | Final

SCRIPT: tuple[Turn, ...] = (
    Call("search", {"query": "old logs"}, "c1"),
    Call("delete_file", {"path": "/tmp/old"}, "c2"),
    Final("done"),
)


def numbered(turns: Sequence[Turn], from_turn: int) -> list[Turn]:
    """``turns`` for a model that picks its answer by the conversation (answer n when it holds n answers):
    ``turns[0]`` at position ``from_turn``, behind turns no call reaches (a fork's model starts there)."""
    return [Final("never asked")] * from_turn + list(turns)


class Scripted(Protocol):
    """A framework's scripted model: it answers its turns in order and keeps every request it was given."""

    asked: list[Any]


@dataclass(frozen=True)
class ToolResult:
    """What the model saw as a tool's result: the call it answers (``None`` where the framework's tool
    results name no call) and the result itself, parsed back from the framework's format."""

    call_id: str | None
    content: Any


@dataclass(frozen=True)
class Refusal:
    """A guard() (or tools_of()) that must refuse a tool, and the error it must say: all of it, or (``whole``
    false) how it starts."""

    attempt: Callable[[], object]
    says: str
    whole: bool = True


class FrameworkCase(Protocol):
    """One framework as the contract drives it."""

    framework: str  # how Castor's errors name it: "LangChain tool 'x' cannot be guarded: ..."
    model_name: str  # the journal names a model step "model:<model_name>"
    tool_result_word: str  # the framework's word for the tool's result the model reads
    call_ids: bool  # whether that result names the call it answers
    inspected_call: str  # how ``castor inspect`` prints the model's call to delete_file (``INSPECTED_CALL``)
    reports_usage: bool  # the scripted model reports ``USAGE``; if not, Castor counts the tokens itself

    def environment(self) -> dict[str, str]:
        """The variables the framework needs to run offline, set for each test."""
        ...

    def scripted(self, turns: Sequence[Turn] = SCRIPT, *, from_turn: int = 0) -> Scripted:
        """A scripted model answering the run's turn ``from_turn + i`` with ``turns[i]`` (a fork's model
        starts at the fork point's turn)."""
        ...

    def agent(self, model: Scripted, prompt: str = PROMPT) -> Callable[[], Awaitable[str]]:
        """The agent function: the framework's agent with the two tools and ``model``, guarded, asked
        ``prompt``; it returns the agent's final answer."""
        ...

    def kernel(self, **options: Any) -> Castor:
        """A kernel with the framework's two tools (``tools_of``), delete_file destructive."""
        ...

    def tool_result(self, model: Scripted) -> ToolResult:
        """The tool's result the model read last (its last request), checking it has the framework's shape."""
        ...

    def check_record(self, cp: AgentCheckpoint, inspected: str) -> None:
        """The framework's side of a readable model step: the journaled request of ``cp``'s steps (the run
        suspended at delete_file) and what ``castor inspect`` printed for them."""
        ...

    def refusals(self) -> list[Refusal]:
        """Tools Castor cannot call (a schema it cannot express, an argument it cannot pass), each tried on
        guard() or tools_of()."""
        ...
