"""A conversation's canonical request parts, extended at each step by its new messages only.

Each guard's conversations are kept per Castor run (``RunContext.frameworks``), so a coordinator driving
thousands of runs that share one guarded agent finds each run's previous step at once, and a run's
conversations go with it. Outside a run they are kept process-wide, the most recent few.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

from castor.kernel.context import current_run

_PER_RUN = 16  # conversations a run keeps per guard (a run has one or two: sub-agents, a second invocation)


class Conversations:
    """The canonical parts of a conversation's messages (``convert``: an ``IdentityCache`` of one message's
    part, or with ``flat``, of its list of parts), extended at each step by the new messages only.

    A framework asks its model with the whole conversation so far: the same message objects as at the
    previous step, then one or two new ones. Finding that prefix by identity (one C-level pass) and
    extending the previous list of parts costs a step its new messages rather than a cache lookup per
    message. The previous conversations are kept by their first message (held, so its id is not reused);
    anything else (an edited history, another run's list) is converted message by message.

    ``extend`` (default ``convert``) converts the messages a step adds to a conversation found by its
    prefix: ``convert`` may be a process-wide ``IdentityCache``, worth it for a history handed to the next
    run, but the messages the run itself adds are in its conversation already, and a process-wide cache
    would keep each of them (and its parts) alive long after the run, for the collector to walk again and
    again."""

    def __init__(
        self, convert: Callable[[Any], Any], *, flat: bool = False, size: int = 256,
        extend: Callable[[Any], Any] | None = None,
    ) -> None:
        self._convert = convert
        self._extend = convert if extend is None else extend
        self._flat = flat
        self._size = size
        self._entries: dict[int, tuple[list[Any], list[Any]]] = {}

    def __call__(self, messages: Sequence[Any]) -> list[Any]:
        """The parts of ``messages``, in order (a list nobody may change: the next step's request shares it)."""
        if not messages:
            return []
        first = messages[0]
        ctx = current_run.get()
        entries: dict[int, tuple[list[Any], list[Any]]]
        if ctx is None:
            entries, size = self._entries, self._size
        else:
            entries, size = ctx.frameworks.get(self) or ctx.frameworks.setdefault(self, {}), _PER_RUN
        hit = entries.get(id(first))
        if hit is not None and hit[0][0] is first and len(hit[0]) <= len(messages) and all(
            map(operator.is_, hit[0], messages)
        ):
            seen, parts = hit
            if len(seen) == len(messages):
                return parts
            parts = parts + self._parts(messages[len(seen):], self._extend)
        else:
            parts = self._parts(messages, self._convert)
            if len(entries) >= size:
                entries.pop(next(iter(entries)), None)  # another thread may have dropped it
        entries[id(first)] = (list(messages), parts)
        return parts

    def _parts(self, messages: Sequence[Any], convert: Callable[[Any], Any]) -> list[Any]:
        if self._flat:
            return [part for message in messages for part in convert(message)]
        return [convert(message) for message in messages]


class EqualConversations:
    """A conversation whose items a framework makes anew at each step (equal to the previous step's, not the
    same objects: the OpenAI Agents SDK dumps its items again for every model call).

    ``convert(item)`` returns ``(snapshot, part)``: a copy of the item as plain JSON data (compared with the
    next step's items, one C-level ``==`` over the list) and its canonical part; it raises ``NotPlain`` for
    an item it cannot copy, and the caller then converts the whole conversation its own way. The previous
    step's snapshots are Castor's copies, so a framework changing its items afterwards cannot fool the
    comparison (Python's ``==``, for which ``1``, ``1.0`` and ``True`` are one value: an item rewritten from
    one to another at the same place keeps its first part). Kept per guarded model, the most recent few
    conversations: a run's own in a Castor run, else the process's."""

    def __init__(self, convert: Callable[[Any], tuple[Any, Any]], size: int = 8) -> None:
        self._convert = convert
        self._size = size
        self._recent: list[tuple[list[Any], list[Any]]] = []

    def __call__(self, items: list[Any]) -> list[Any]:
        """The parts of ``items``, in order (a list nobody may change); ``NotPlain`` as ``convert`` raises it."""
        ctx = current_run.get()
        recent: list[tuple[list[Any], list[Any]]] = self._recent if ctx is None else ctx.frameworks.get(self, [])
        found = None
        for entry in recent:
            snapshots, parts = entry
            seen = len(snapshots)
            if seen <= len(items) and snapshots == items[:seen]:
                found = entry
                if seen < len(items):
                    new = [self._convert(item) for item in items[seen:]]
                    snapshots = snapshots + [snapshot for snapshot, _ in new]
                    parts = parts + [part for _, part in new]
                break
        else:
            converted = [self._convert(item) for item in items]
            snapshots, parts = [snapshot for snapshot, _ in converted], [part for _, part in converted]
        # A new list swapped in whole: a synchronous framework's runs share the model from several threads.
        if recent and found is recent[0]:  # the usual step: the previous step's conversation goes on
            kept = [(snapshots, parts), *recent[1:]]
        else:
            kept = [(snapshots, parts), *(entry for entry in recent if entry is not found)][: self._size]
        if ctx is None:
            self._recent = kept
        else:
            ctx.frameworks[self] = kept
        return parts
