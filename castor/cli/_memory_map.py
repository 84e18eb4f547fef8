"""How ``castor inspect`` prints a run's context memory (``castor.mmu``): what is resident, what was paged
out and where it went, each message with its token count; and the MMU's steps, one short line each.

Everything comes from the run's checkpoint: the resident messages are its ``context_history`` as the run
left it, the paged-out ones are in its journal (each page-out step journals the messages it took out).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from castor.checkpoint import AgentCheckpoint, SyscallRecord
from castor.mmu.core import PAGE_IN_TOOL, PAGE_OUT_TOOL, SEARCH_MEMORY_TOOL
from castor.mmu.messages import OfflineEstimator, fields_of, is_message, text_of

MMU_STEPS = frozenset({PAGE_OUT_TOOL, PAGE_IN_TOOL, SEARCH_MEMORY_TOOL})
Short = Callable[[Any, int], str]


def _tokens(message: Any) -> int:
    given = fields_of(message).get("token_count") or 0
    return int(given) if given > 0 else OfflineEstimator().count(text_of(message))


def _said(message: Any, short: Short) -> str:
    fields = fields_of(message)
    return f"{fields.get('role', '?')}: {json.dumps(short(text_of(message), 50), ensure_ascii=False)}"


def mmu_step_text(index: int, record: SyscallRecord, short: Short) -> str:
    """``[i] page out 2 messages (39 tokens): user: "..."``, ``[i] page in 1.0``,
    ``[i] search_memory "q" -> 2 hits``."""
    args, response = record.arguments, record.response
    if record.tool_name == PAGE_OUT_TOOL:
        messages = args.get("messages") or []
        tokens = response.get("tokens", "?") if isinstance(response, dict) else "?"
        summary = " + summary" if args.get("summarize") else ""
        plural = "" if len(messages) == 1 else "s"
        return f"  [{index}] page out {len(messages)} message{plural} ({tokens} tokens){summary}: " + ", ".join(
            _said(m, short) for m in messages[:3]
        ) + (", ..." if len(messages) > 3 else "")
    if record.tool_name == PAGE_IN_TOOL:
        return f"  [{index}] page in {', '.join(args.get('pages') or [])}"
    hits = len(response) if isinstance(response, list) else short(response, 40)
    return f"  [{index}] search_memory {json.dumps(args.get('query', ''))} -> {hits} hits"


def memory_lines(cp: AgentCheckpoint, short: Short) -> list[str]:
    """The memory map: resident messages, then paged-out ones by page id (those paged in again marked)."""
    resident = [m for m in cp.context_history if is_message(m)]
    outs = [(i, r) for i, r in enumerate(cp.syscall_log) if r.tool_name == PAGE_OUT_TOOL]
    if not resident and not outs:
        return []
    back = {
        page: i for i, r in enumerate(cp.syscall_log) if r.tool_name == PAGE_IN_TOOL
        for page in r.arguments.get("pages") or ()
    }
    paged: list[str] = []
    paged_tokens = 0
    for step, record in outs:
        sizes = record.response.get("page_tokens") if isinstance(record.response, dict) else None
        for n, message in enumerate(record.arguments.get("messages") or ()):
            tokens = sizes[n] if isinstance(sizes, list) and n < len(sizes) else _tokens(message)
            paged_tokens += tokens
            again = f", paged in at step {back[f'{step}.{n}']}" if f"{step}.{n}" in back else ""
            paged.append(f"    {step}.{n}  {_said(message, short)} ({tokens} tokens{again})")
    sizes_resident = [_tokens(m) for m in resident]
    lines = [
        f"Memory: {len(resident)} resident messages ({sum(sizes_resident)} tokens), "
        f"{len(paged)} paged out ({paged_tokens} tokens)",
        "  resident:",
    ]
    for message, tokens in zip(resident, sizes_resident, strict=True):
        fields = fields_of(message)
        mark = " pinned" if fields.get("pinned") else " summary" if fields.get("summary_of") else ""
        lines.append(f"    {_said(message, short)} ({tokens} tokens{mark})")
    if paged:
        lines += ["  paged out:", *paged]
    return lines
