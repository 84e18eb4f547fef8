"""The run's conversation from agent code: ``castor.lib.memory()`` and ``castor.lib.search_memory``.

    mem = memory()
    mem.add("system", "You clean up servers.")          # system prompts and pinned messages always stay
    mem.add("user", "Free some disk on web-1")
    reply = await mem.complete(tools=[...])             # room made first (journaled page-out), then the call
    hits = await mem.search("disk usage")               # paged-out messages that match (journaled)
    await mem.page_in([h["id"] for h in hits])          # back into the context (journaled)

The conversation is the run's ``checkpoint.context_history``; a resumed or forked run rebuilds it as the
live run had it, step for step (``castor.mmu.core``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from castor.errors import ConfigError
from castor.kernel.context import RunContext, active_run
from castor.lib.models import complete
from castor.llm.types import ModelResponse
from castor.mmu.messages import CastorMessage, for_model, is_message


def _mmu(ctx: RunContext) -> Any:
    mmu = ctx.services.mmu
    if mmu is None:
        raise ConfigError("this kernel has no context memory: pass Castor(mmu=castor.mmu.MMU(budget=...))")
    return mmu


class Memory:
    """The current run's conversation under its MMU's token budget."""

    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self.mmu = _mmu(ctx)

    @property
    def history(self) -> list[Any]:
        """The resident messages as kept (``CastorMessage``s and 0.5.1's plain entries)."""
        return self._ctx.checkpoint.context_history

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The resident messages as a model receives them."""
        return [for_model(e) for e in self.history if is_message(e)]

    @property
    def tokens(self) -> int:
        """What the resident messages weigh."""
        return int(self.mmu.total_tokens(self.history))

    def add(self, role: str, content: Any = "", *, pinned: bool = False, **fields: Any) -> CastorMessage:
        """Append a message (``fields``: ``tool_calls``, ``tool_call_id``, ``name``, ...)."""
        text = content if isinstance(content, str) else json.dumps(content, sort_keys=True, default=str)
        message = CastorMessage(role=role, content=text, pinned=pinned, **fields)
        self.history.append(message)
        return message

    def add_response(self, reply: ModelResponse) -> CastorMessage:
        """Append a model's answer: its text and the tool calls it asks for."""
        calls = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in reply.tool_calls]
        extra: dict[str, Any] = {"tool_calls": calls} if calls else {}
        return self.add("assistant", reply.text, **extra)

    def add_tool_result(self, call_id: str, result: Any, *, name: str | None = None) -> CastorMessage:
        """Append a tool's result for the model's call ``call_id``."""
        extra: dict[str, Any] = {"name": name} if name else {}
        return self.add("tool", result, tool_call_id=call_id, **extra)

    async def fit(self, reserve: int = 0) -> int:
        """Make the context fit the budget (less ``reserve`` tokens) now; how many messages left."""
        return int(await self.mmu.fit(self._ctx, reserve))

    async def complete(self, *, tools: Iterable[Mapping[str, Any]] | None = None, **options: Any) -> ModelResponse:
        """Make room, ask the kernel's model with the resident messages, append and return its answer
        (``options``: those of ``castor.lib.complete``)."""
        await self.fit()
        reply = await complete(self.messages, tools=tools, **options)
        self.add_response(reply)
        return reply

    async def search(self, query: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Paged-out messages matching ``query``, best first: ``{id, role, content, tokens, step, score}``."""
        return list(await self.mmu.search(self._ctx, query, limit))

    async def page_in(self, ids: Iterable[str]) -> int:
        """Bring paged-out messages back (appended to the context); how many came back."""
        return int(await self.mmu.page_in(self._ctx, ids))


def memory() -> Memory:
    """The current run's conversation (the kernel needs ``Castor(mmu=...)``)."""
    return Memory(active_run())


async def search_memory(query: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Search the current run's paged-out messages (a journaled step)."""
    return await memory().search(query, limit)
