"""The context-window MMU: a run's conversation kept under a budget of tokens, its evictions replayed exactly.

    kernel = Castor(llm=provider, mmu=MMU(budget=6000, driver=SQLiteDriver("memory.db"), summarize=True))

The conversation is the run's ``checkpoint.context_history``. Before a model call (``castor.lib.complete``,
``chat``, ``stream``, ``model_call``, 0.5.1's ``llm_inference`` tool, or ``memory().fit()``), if the
messages weigh more than the budget, the oldest messages that are neither pinned nor system prompts
leave the context (an assistant's tool calls with their results), oldest first. That is a step of the run:

    step s      sys_kernel_page_out  {"messages": [each message with its place "at"], "summarize": bool}
    step s + 1  model:<id>           the summary of what left (a model syscall, charged), if summarize
    step s + 2  the model call that asked for room

A page-out is a kernel operation (like ``spawn``), run by the process driving the agent, never by a tool
worker: it stores the pages in the driver and journals what left. Replay is exact because the journal
decides: while a run replays, a page-out happens where, and only where, the journal has one, and takes
the messages at the journaled places (a different message there is a ``ReplayDivergenceError``); the
summary is served from the journal. So a resumed run or a fork rebuilds the context the live run had at
every step, whatever budget or counter it is given now; the budget decides only live steps. The run's
conversation restarts from ``checkpoint.context_start`` (what it held before its first step) each time
it is driven, and its agent's appends replay as its code runs again.

A page-out whose pages the driver fails to store is a failed step (``castor.kernel.failed_steps``), its
summary's step too: the messages stay in the context, and an agent that catches the error goes on.

A page is found again by ``search_memory`` (a journaled step: the hits are served from the journal on
replay) and brought back by a page-in (``sys_kernel_page_in``, journaled; the messages come from the
run's own journal, so a fork can page in what its prefix paged out).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

from castor.checkpoint import AgentCheckpoint, SyscallRecord
from castor.errors import CastorError, ConfigError, ReplayDivergenceError
from castor.kernel.context import RunContext, Syscall
from castor.kernel.steps import answer, journaled
from castor.mmu.driver import MemoryDriver, as_driver
from castor.mmu.drivers.memory import InMemoryDriver
from castor.mmu.messages import (
    CastorMessage,
    CharCountEstimator,
    OfflineEstimator,
    Page,
    TokenCounter,
    fields_of,
    is_message,
    is_pinned,
    is_tool_result,
    last_turn,
    render_hits,
    text_of,
)

PAGE_OUT_TOOL = "sys_kernel_page_out"
PAGE_IN_TOOL = "sys_kernel_page_in"
SEARCH_MEMORY_TOOL = "search_memory"
LLM_TOOL = "llm_inference"
SUMMARY_PREFIX = "[Summary of earlier conversation] "
SUMMARY_SYSTEM = (
    "Summarise the conversation below for the assistant who had it: keep facts, decisions, names, numbers "
    "and open questions; drop pleasantries. Answer with the summary only."
)
_SIZES_KEPT = 50_000  # texts whose count is kept (then the cache starts over)
PASS = object()  # on_tool: the call is not the MMU's, go on to the kernel


class MMU:
    """The context-window MMU (``Castor(mmu=...)``, or castor-kernel 0.5.1's ``Castor(lodge=...)``).

    ``budget`` (0.5.1: ``watermark``) is the context's size in tokens; ``driver`` keeps what leaves
    (default: in memory); ``token_counter`` counts a message that has no ``token_count`` (default: the
    offline estimate); ``summarize`` writes a summary of what leaves with the kernel's model (``True``,
    ``summary_model`` or the kernel's default model) or with an async function ``summarize(request)``.
    0.5.1's signature, ``MMU(registry, driver, token_counter, watermark, consumes, cost_per_use)``,
    registers ``search_memory`` in ``registry`` and counts as 0.5.1 did (``len(text) // 4``); page-outs
    are charged nothing (0.5.1's default).
    """

    def __init__(
        self,
        registry: Any = None,
        driver: Any = None,
        token_counter: TokenCounter | None = None,
        watermark: int = 8000,
        consumes: str = "system",
        cost_per_use: float = 0.0,
        *,
        budget: int | None = None,
        summarize: Any = False,
        summary_model: str | None = None,
        summary_max_tokens: int = 256,
        search_limit: int = 5,
    ) -> None:
        size = watermark if budget is None else budget
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ConfigError(f"MMU budget must be a positive number of tokens, got {size!r}")
        if not isinstance(summary_max_tokens, int) or summary_max_tokens <= 0:
            raise ConfigError(f"MMU summary_max_tokens must be a positive integer, got {summary_max_tokens!r}")
        if not (isinstance(summarize, bool) or callable(summarize)):
            raise ConfigError(f"MMU summarize must be True, False or an async function, got {summarize!r}")
        self.budget = size
        self.driver: MemoryDriver = as_driver(driver if driver is not None else InMemoryDriver())
        # 0.5.1's form (a registry first) keeps 0.5.1's default count, len(text) // 4; Castor's errs high.
        default_counter = CharCountEstimator() if registry is not None else OfflineEstimator()
        self.counter: TokenCounter = token_counter or default_counter
        self._sizes: dict[str, int] = {}  # text -> the counter's count of it
        self.summarize = summarize
        self.summary_model = summary_model
        self.summary_max_tokens = summary_max_tokens
        self.search_limit = search_limit
        self.consumes, self.cost_per_use = consumes, cost_per_use  # 0.5.1's; a page-out is free here
        if registry is not None:
            _register_search(registry, self)

    # --- 0.5.1's names --------------------------------------------------------------------------------

    @property
    def watermark(self) -> int:
        """0.5.1's name of the budget."""
        return self.budget

    @property
    def _watermark(self) -> int:
        return self.budget

    @property
    def kernel_tool_names(self) -> set[str]:
        """The MMU's own steps in a journal."""
        return {PAGE_OUT_TOOL, PAGE_IN_TOOL}

    PASS = PASS
    hooked = frozenset({LLM_TOOL, SEARCH_MEMORY_TOOL})
    """Tool names ``castor.lib.tool`` hands to ``on_tool``."""

    async def check_and_evict(self, proxy: Any, checkpoint: AgentCheckpoint) -> None:
        """0.5.1's hook: make the run's context fit before a model call (``fit``)."""
        await self.fit(proxy._ctx)

    def total_tokens(self, checkpoint: AgentCheckpoint | Sequence[Any]) -> int:
        """What the messages of a checkpoint's context (or of a list) weigh, in tokens."""
        history = checkpoint.context_history if isinstance(checkpoint, AgentCheckpoint) else checkpoint
        return sum(self.tokens(e) for e in history if is_message(e))

    def _select_victims(self, checkpoint: AgentCheckpoint) -> list[Any]:
        history = checkpoint.context_history
        return [history[i] for i in self.select_victims(history)]

    # --- sizes and choices ----------------------------------------------------------------------------

    def tokens(self, entry: Any) -> int:
        """A message's weight: its ``token_count`` if set, else the counter's count of its text."""
        if isinstance(entry, CastorMessage):
            if entry.token_count > 0:
                return entry.token_count
            extra = entry.__pydantic_extra__
            if not (extra and extra.get("tool_calls")):
                # Counted once per text: every model call weighs the whole context again.
                count = self._sizes.get(entry.content)
                if count is None:
                    if len(self._sizes) >= _SIZES_KEPT:
                        self._sizes.clear()
                    count = self._sizes[entry.content] = int(self.counter.count(entry.content))
                return count
            return int(self.counter.count(text_of(entry)))
        given = entry.get("token_count", 0)
        return int(given) if given and given > 0 else int(self.counter.count(text_of(entry)))

    def wants_room(self, ctx: RunContext, reserve: int = 0) -> bool:
        """Whether ``fit`` has anything to do now (checked without a coroutine on every model call)."""
        log = ctx.checkpoint.syscall_log
        if ctx.next_step < len(log):
            return log[ctx.next_step].tool_name == PAGE_OUT_TOOL
        history = ctx.checkpoint.context_history
        return bool(history) and self.total_tokens(history) > self.budget - reserve

    def select_victims(self, history: Sequence[Any], reserve: int = 0, headroom: int = 0) -> list[int]:
        """Places of the messages to page out when the context exceeds ``budget - reserve``, so that it fits
        ``budget - reserve - headroom`` (room for a summary): the oldest first, never a pinned message or a
        system prompt, never the last message (nor, if it is a tool's result, the call it answers); an
        assistant's tool calls leave with their results."""
        total = self.total_tokens(history)
        if total <= self.budget - reserve:
            return []
        limit = self.budget - reserve - headroom
        places: list[int] = []
        i = 0
        end = last_turn(history)  # the message being answered (with its tool call) never leaves
        while i < end and total > limit:
            entry = history[i]
            if not is_message(entry) or is_pinned(entry):
                i += 1
                continue
            group = [i]
            if fields_of(entry).get("tool_calls"):
                while group[-1] + 1 < end and is_tool_result(history[group[-1] + 1]):
                    group.append(group[-1] + 1)
            for place in group:
                total -= self.tokens(history[place])
            places += group
            i = group[-1] + 1
        return places

    # --- the run's conversation -------------------------------------------------------------------------

    def start(self, cp: AgentCheckpoint) -> None:
        """A run is about to be driven: its conversation restarts from what it held before its first step
        (replay rebuilds the rest). A run with a journal and no recorded start keeps its context as it is."""
        if cp.context_start is None:
            if not cp.syscall_log:
                cp.context_start = [copy.deepcopy(e) for e in cp.context_history]
            return
        cp.context_history = [copy.deepcopy(e) for e in cp.context_start]

    async def fit(self, ctx: RunContext, reserve: int = 0) -> int:
        """Page out what the context cannot hold (a journaled step; on replay, what the journal says).
        Returns how many messages left."""
        cp = ctx.checkpoint
        history = cp.context_history
        log = cp.syscall_log
        if ctx.next_step < len(log):  # replaying: the journal decides
            record = log[ctx.next_step]
            if record.tool_name != PAGE_OUT_TOOL:
                return 0
            places = _journaled_places(record, ctx.next_step, len(history))
            summarize: Any = bool(record.arguments.get("summarize"))
        else:
            summarize = self.summarize and ctx.services.models is not None
            # A summary takes the place of what leaves: room is made for the most it may weigh.
            places = self.select_victims(history, reserve, self.summary_max_tokens + 16 if summarize else 0)
            if not places:
                return 0
        arguments = {
            "messages": [{**fields_of(history[p]), "at": p} for p in places],
            "summarize": bool(summarize),
        }
        call = Syscall(ctx.run_id, ctx.claim_step(), PAGE_OUT_TOOL, arguments, ctx)
        # The summary's step is claimed right after the page-out's, live and on replay alike (before the
        # journal may raise a failed page-out's error again), so the steps after it keep their numbers.
        summary = self._summary_call(ctx, [history[p] for p in places]) if summarize else None
        done = journaled(call)  # on replay: the same messages at the same places, or a divergence
        pages = [
            Page(f"{call.step}.{i}", call.step, str(m["role"]), text_of(m), self.tokens(history[p]), m)
            for i, (p, m) in enumerate(zip(places, (fields_of(history[p]) for p in places), strict=True))
        ]
        # Out of the context before the first await: a concurrent model call of the run sees it gone.
        before = list(history)
        gone = set(places)
        history[:] = [e for i, e in enumerate(history) if i not in gone]
        try:
            # The driver is an index of the journal: a replayed page-out is stored again under this run's
            # pid (idempotent), so a fork, or a process whose in-memory driver never saw it, can search it.
            await self.driver.store_pages(cp.pid, pages)
            if done is None:
                response = {"paged_out": [p.id for p in pages], "page_tokens": [p.tokens for p in pages],
                            "tokens": sum(p.tokens for p in pages), "resident_tokens": self.total_tokens(history)}
                await answer(call, response, {})
        except BaseException as error:
            # Stored nowhere: the messages stay in the context (with what was added since, at the end), and
            # the agent that catches the error goes on past a failed step (its summary's too), as a replay will.
            history[:] = before + history[len(before) - len(places):]
            await ctx.step_failed(call, error)
            if summary is not None:
                await ctx.step_failed(summary, error)
            raise
        text = await self._summary_text(ctx.services.models.chain(summary)) if summary is not None else None
        if text:  # where the first message that left was (what followed it only grew at the end since)
            note = CastorMessage.model_validate(
                {"role": "user", "content": SUMMARY_PREFIX + text, "summary_of": [p.id for p in pages]}
            )
            history.insert(places[0], note)
        return len(places)

    def _summary_call(self, ctx: RunContext, leaving: list[Any]) -> Any:
        """The summary's model syscall, its step claimed now (right after the page-out's), run later through
        the model chain."""
        models = ctx.services.models
        invoke = self.summarize if callable(self.summarize) else None
        model = self.summary_model or models.default_model or ("summarizer" if invoke else "")
        if not model:
            raise ConfigError("MMU(summarize=True) needs a model: Castor(llm=<provider>) or MMU(summary_model=...)")
        transcript = "\n".join(f"{fields_of(e).get('role')}: {text_of(e)}" for e in leaving)
        request = {
            "messages": [{"role": "system", "content": SUMMARY_SYSTEM}, {"role": "user", "content": transcript}],
            "max_tokens": self.summary_max_tokens,
        }
        return models.syscall(ctx, model, request, invoke=invoke, max_tokens=self.summary_max_tokens)

    @staticmethod
    async def _summary_text(summary: Any) -> str:
        response = await summary
        if not isinstance(response, dict) or response.get("status") == "INSUFFICIENT_CAPABILITY":
            return ""  # the budget could not pay for a summary: the messages leave without one
        return str(response.get("text") or "")

    # --- finding pages again ------------------------------------------------------------------------------

    async def search(self, ctx: RunContext, query: str, limit: int | None = None, pid: str | None = None) -> Any:
        """``search_memory``: the run's paged-out messages that match ``query`` (a journaled step)."""
        if not isinstance(query, str):
            raise CastorError(f"search_memory query must be a string, got {query!r}")
        arguments: dict[str, Any] = {"query": query, "limit": int(limit or self.search_limit)}
        if pid:
            arguments["pid"] = pid  # 0.5.1 named the run to search
        call = Syscall(ctx.run_id, ctx.claim_step(), SEARCH_MEMORY_TOOL, arguments, ctx)
        record = journaled(call)
        if record is not None:
            return record.response
        try:
            hits = await self.driver.find(pid or ctx.checkpoint.pid, query, arguments["limit"])
        except Exception as error:  # the agent may catch it and go on: the step is then journaled as failed
            await ctx.step_failed(call, error)
            raise
        return await answer(call, [h.to_dict() for h in hits], {})

    async def page_in(self, ctx: RunContext, ids: Iterable[str]) -> int:
        """Bring paged-out messages back at the end of the context (a journaled step). Returns how many."""
        wanted = [str(i) for i in ids]
        cp = ctx.checkpoint
        live = ctx.next_step >= len(cp.syscall_log)
        # Looked up before the step is claimed: an unknown id is the agent's error, not a step of the run.
        pages = [_page_from_journal(cp.syscall_log, page_id, cp.pid) for page_id in wanted] if live else []
        call = Syscall(ctx.run_id, ctx.claim_step(), PAGE_IN_TOOL, {"pages": wanted}, ctx)
        record = journaled(call)
        if record is None:
            for page in pages:
                page["tokens"] = self.tokens(page["message"])
            response = await answer(call, {"pages": pages, "tokens": sum(int(p["tokens"]) for p in pages)}, {})
        else:
            response = record.response
        for page in response["pages"]:
            fields = {k: v for k, v in page["message"].items() if k != "at"}
            cp.context_history.append(CastorMessage.model_validate({**fields, "paged_in": page["id"]}))
        return len(response["pages"])

    async def on_tool(self, ctx: RunContext, name: str, arguments: dict[str, Any]) -> Any:
        """``castor.lib.tool`` hands the MMU's tool names here: ``search_memory`` is answered (as text, as
        0.5.1 did), ``llm_inference`` gets room first. ``PASS``: go on to the kernel."""
        if name == SEARCH_MEMORY_TOOL:
            return render_hits(await self.search(ctx, arguments.get("query", ""), arguments.get("limit"),
                                                 arguments.get("pid")))
        if self.wants_room(ctx):
            await self.fit(ctx)
        return PASS

    def tool_schema(self) -> dict[str, Any]:
        """``search_memory`` as a tool a model may call (``castor.lib.complete(tools=[...])``)."""
        return {
            "name": SEARCH_MEMORY_TOOL,
            "description": "Search earlier messages of this conversation that no longer fit in the context.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["query"],
            },
        }


def _journaled_places(record: SyscallRecord, step: int, size: int) -> list[int]:
    places = [m.get("at") for m in record.arguments.get("messages") or () if isinstance(m, dict)]
    if not places or any(not isinstance(p, int) or not 0 <= p < size for p in places):
        raise ReplayDivergenceError(
            step, record.request, {"tool_name": PAGE_OUT_TOOL, "arguments": {"context_size": size}}
        )
    return places  # type: ignore[return-value]


def _page_from_journal(log: Sequence[SyscallRecord], page_id: str, pid: str) -> dict[str, Any]:
    step, _, index = page_id.partition(".")
    record = log[int(step)] if step.isdigit() and int(step) < len(log) else None
    messages = record.arguments.get("messages") if record is not None and record.tool_name == PAGE_OUT_TOOL else None
    if not messages or not index.isdigit() or int(index) >= len(messages):
        raise CastorError(f"page {page_id!r} is not a page run {pid!r} paged out (ids look like '<step>.<n>')")
    message = messages[int(index)]
    return {"id": page_id, "step": int(step), "message": message}


def _register_search(registry: Any, mmu: MMU) -> None:
    """0.5.1 registered ``search_memory`` in the gate's registry: list it there too."""
    async def search_memory(query: str, pid: str = "") -> str:
        """Search a run's paged-out messages (answered by the kernel inside a run)."""
        return render_hits([h.to_dict() for h in await mmu.driver.find(pid, query, mmu.search_limit)])

    add = getattr(registry, "add", None)
    if not callable(add):
        raise ConfigError(f"MMU(registry=...) takes a castor.registry.ToolRegistry, got {type(registry).__name__}")
    if SEARCH_MEMORY_TOOL not in registry:
        add((SEARCH_MEMORY_TOOL, search_memory), cost={})
