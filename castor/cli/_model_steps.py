"""How ``castor inspect`` prints a model step: the model, the last message asked, the answer, the tokens."""

from __future__ import annotations

import json
from typing import Any

from castor.checkpoint import SyscallRecord


def model_step_text(index: int, record: SyscallRecord, short: Any) -> str:
    """``[i] model <id>: user: "..." (+N earlier messages; tools: a, b) -> "answer" calls t(...) [finish]``."""
    model = record.tool_name.split(":", 1)[1]
    request = (record.arguments or {}).get("request")
    asked = _asked(request, short)
    response = record.response
    if not isinstance(response, dict):
        return f"  [{index}] model {model}: {asked} -> {short(response, 60)}"
    if response.get("status") == "INSUFFICIENT_CAPABILITY":
        return f"  [{index}] model {model}: {asked} -> refused: {response.get('feedback_message', '')}"
    answer = short(response.get("text", response), 60)
    calls = [
        f"{c.get('name')}({short(c.get('arguments', {}), 40)})"
        for c in response.get("tool_calls") or ()
        if isinstance(c, dict)
    ]
    text = f"  [{index}] model {model}: {asked} -> {json.dumps(answer, ensure_ascii=False)}"
    if calls:
        text += " calls " + ", ".join(calls)
    finish = response.get("finish_reason")
    if finish and finish != "stop":
        text += f" [{finish}]"
    usage = response.get("usage")
    if isinstance(usage, dict) and "input_tokens" in usage:
        estimated = " estimated" if usage.get("estimated") else ""
        text += f" (tokens in {usage['input_tokens']} / out {usage.get('output_tokens', 0)}{estimated})"
    return text


def _asked(request: Any, short: Any) -> str:
    if not isinstance(request, dict):
        return short(request, 60)
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return short(request, 60)
    last = messages[-1]
    text = f"{last.get('role', '?')}: {json.dumps(short(last.get('content', ''), 50), ensure_ascii=False)}"
    notes = [f"+{len(messages) - 1} earlier messages"] if len(messages) > 1 else []
    tools = [t.get("name") for t in request.get("tools") or () if isinstance(t, dict)]
    if tools:
        notes.append("tools: " + ", ".join(str(t) for t in tools))
    return text + (f" ({'; '.join(notes)})" if notes else "")
