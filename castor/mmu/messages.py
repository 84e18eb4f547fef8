"""A run's conversation as the MMU sees it: messages, their token counts, and the pages that leave it.

A message is a ``CastorMessage`` (castor-kernel 0.5.1's model: ``role``, ``content``, ``pinned``,
``token_count``, plus any provider field such as ``tool_calls`` or ``tool_call_id``) or a plain mapping
with a ``role`` and a ``content``. A message that leaves the context becomes a ``Page``: what it said,
its token count, and the step of the run that paged it out, by which it is found again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

# The fields of a message that are the MMU's, never sent to a model.
MMU_FIELDS = frozenset({"pinned", "token_count", "paged_in", "summary_of"})
NO_MATCH = "No matching memories found."
BYTES_PER_TOKEN = 3  # castor.llm.cost's estimate: below the ~4 of real tokenizers, so it errs high


class CastorMessage(BaseModel):
    """One message of a run's conversation, with what the MMU needs: ``pinned`` messages never leave the
    context; ``token_count`` (0: count it) is what the message weighs against the context budget. Other
    fields (``tool_calls``, ``tool_call_id``, ``name``) are kept and sent to the model as they are."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str
    pinned: bool = False
    token_count: int = 0


@runtime_checkable
class TokenCounter(Protocol):
    """Counts the tokens of a text (0.5.1's seam: plug a tokenizer in here)."""

    def count(self, text: str) -> int:
        """Tokens ``text`` takes."""
        ...


class CharCountEstimator:
    """castor-kernel 0.5.1's estimate: ``max(1, len(text) // 4)``."""

    def count(self, text: str) -> int:
        """A quarter of the characters, at least one."""
        return max(1, len(text) // 4)


class OfflineEstimator:
    """Castor's offline estimate (``castor.llm.cost``): UTF-8 bytes / 3, rounded up, at least one. It errs
    high on purpose, so a context that fits by this count fits the model; no tokenizer is downloaded."""

    def count(self, text: str) -> int:
        """An upper estimate of the tokens of ``text``."""
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        return max(1, math.ceil(size / BYTES_PER_TOKEN))


def is_message(entry: Any) -> bool:
    """Whether a ``context_history`` entry is a message (0.5.1 kept other entries there too)."""
    if isinstance(entry, CastorMessage):
        return True
    return isinstance(entry, Mapping) and isinstance(entry.get("role"), str) and "content" in entry


def fields_of(entry: Any) -> dict[str, Any]:
    """A message's fields as plain JSON data."""
    if isinstance(entry, CastorMessage):
        return entry.model_dump(mode="json")
    return json.loads(json.dumps(dict(entry), default=str))


def text_of(entry: Any) -> str:
    """What a message says, as counted and searched: its content, and its tool calls if it has any."""
    data = entry.__dict__ if isinstance(entry, CastorMessage) else entry
    extra = entry.__pydantic_extra__ if isinstance(entry, CastorMessage) else entry
    content = data.get("content")
    text = content if isinstance(content, str) else json.dumps(content, sort_keys=True, default=str)
    calls = (extra or {}).get("tool_calls")
    if calls:
        text += " " + json.dumps(calls, sort_keys=True, default=str)
    return text


def is_pinned(entry: Any) -> bool:
    """Pinned messages and system prompts never leave the context (a summary the MMU wrote may)."""
    if isinstance(entry, CastorMessage):
        return entry.pinned or entry.role == "system"
    return bool(entry.get("pinned")) or entry.get("role") == "system"


def for_model(entry: Any) -> dict[str, Any]:
    """The message as a model receives it: without the MMU's own fields."""
    return {k: v for k, v in fields_of(entry).items() if k not in MMU_FIELDS}


@dataclass(frozen=True, slots=True)
class Page:
    """A message paged out of the context: ``id`` is ``"<step>.<index>"`` (the page-out step of the run
    and the message's place in it), ``tokens`` what it weighed, ``message`` its fields as they were."""

    id: str
    step: int
    role: str
    content: str
    tokens: int
    message: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (what drivers store and the journal keeps)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Page:
        """The page ``to_dict`` made."""
        return cls(
            str(data["id"]), int(data["step"]), str(data.get("role", "")), str(data.get("content", "")),
            int(data.get("tokens", 0)), dict(data.get("message") or {}),
        )

    @property
    def order(self) -> tuple[int, int]:
        """Where the page was in the run: page-out step, then place within it (older first)."""
        index = self.id.rpartition(".")[2]
        return self.step, int(index) if index.isdigit() else 0


@dataclass(frozen=True, slots=True)
class Hit:
    """A page found by a search, with its score (higher is better)."""

    page: Page
    score: float

    def to_dict(self) -> dict[str, Any]:
        """What the journal keeps of a search hit."""
        return {"id": self.page.id, "role": self.page.role, "content": self.page.content,
                "tokens": self.page.tokens, "step": self.page.step, "score": round(self.score, 6)}


def render_hits(hits: Any) -> str:
    """Search hits as the text a model or a 0.5.1 agent reads."""
    if not hits:
        return NO_MATCH
    return "\n".join(f"[{h['id']}] {h['role']}: {h['content']}" for h in hits)


def last_turn(history: Sequence[Any]) -> int:
    """Where the last message starts its turn: its place, or, for tool results, their assistant call's."""
    end = len(history)
    while end > 0 and not is_message(history[end - 1]):
        end -= 1
    if end == 0:
        return 0
    start = end - 1
    while start > 0 and fields_of(history[start]).get("role") == "tool":
        start -= 1
    if start < end - 1 and not fields_of(history[start]).get("tool_calls"):
        start += 1  # results without their call in the context: keep the results only
    return start


def is_tool_result(entry: Any) -> bool:
    """A tool's result that may leave the context."""
    return is_message(entry) and not is_pinned(entry) and fields_of(entry).get("role") == "tool"
