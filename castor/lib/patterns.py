"""Agent patterns built only on the primitives: every step they take is an ordinary syscall.

The LLM protocols are plain text so any model can follow them:
``ACTION: tool({"arg": "value"})`` to call a tool, ``FINISH: answer`` to stop,
``DELEGATE: agent: task`` (supervisor) to hand work to a child agent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from castor.lib.primitives import chat, join, parallel, spawn, tool

_ACTION = re.compile(r"ACTION:\s*([\w.\-]+)\s*\((.*)\)\s*$", re.DOTALL | re.MULTILINE)
_FINISH = re.compile(r"FINISH:\s*(.*)", re.DOTALL)
_DELEGATE = re.compile(r"DELEGATE:\s*([\w.\-]+)\s*:\s*(.*)", re.DOTALL)


async def map_reduce(
    items: list[Any],
    map_tool: str,
    reduce_tool: str,
    *,
    map_args_fn: Callable[[Any], dict[str, Any]] | None = None,
    reduce_args_fn: Callable[[list[Any]], dict[str, Any]] | None = None,
) -> Any:
    """Call ``map_tool`` on every item concurrently, then ``reduce_tool`` on the results."""
    to_map = map_args_fn or (lambda item: {"item": item})
    to_reduce = reduce_args_fn or (lambda results: {"items": results})
    mapped = await parallel(*((map_tool, to_map(item)) for item in items))
    return await tool(reduce_tool, **to_reduce(mapped))


def _tool_list(tools: list[str]) -> str:
    return "\n".join(f"  - {name}" for name in tools)


async def react(goal: str, tools: list[str], *, max_steps: int = 10, tool_name: str = "llm_inference") -> str:
    """Reason and act: the LLM picks one tool call at a time until it answers ``FINISH``."""
    system = (
        "You solve the goal step by step with these tools:\n" + _tool_list(tools) + "\n"
        'Reply with exactly one line: ACTION: tool_name({"arg": "value"}) or FINISH: <answer>.'
    )
    transcript = f"Goal: {goal}"
    for _ in range(max_steps):
        reply = str(await chat(transcript, system=system, tool_name=tool_name))
        finished = _FINISH.search(reply)
        if finished:
            return finished.group(1).strip()
        action = _ACTION.search(reply)
        if not action:
            transcript += f"\nYou said: {reply}\nObservation: reply with ACTION or FINISH."
            continue
        name, raw = action.group(1), action.group(2).strip() or "{}"
        if name not in tools:
            observation: Any = f"unknown tool {name!r}; choose from {', '.join(tools)}"
        else:
            try:
                args = json.loads(raw)
            except json.JSONDecodeError as exc:
                observation = f"arguments are not JSON ({exc.msg})"
            else:
                observation = await tool(name, **args) if isinstance(args, dict) else "arguments must be an object"
        transcript += f"\nACTION: {name}({raw})\nObservation: {observation}"
    return f"Stopped after {max_steps} steps without finishing: {goal}"


async def plan_execute(goal: str, executor_tools: list[str], *, tool_name: str = "llm_inference") -> str:
    """Ask the LLM for a JSON plan ``[{"tool": ..., "args": {...}}]``, run it, then ask for a summary."""
    prompt = (
        f"Goal: {goal}\nTools:\n{_tool_list(executor_tools)}\n"
        'Reply with only a JSON list of steps: [{"tool": "tool_name", "args": {"key": "value"}}]'
    )
    reply = str(await chat(prompt, tool_name=tool_name))
    try:
        steps = json.loads(reply)
    except json.JSONDecodeError:
        return f"ERROR: the plan is not JSON: {reply}"
    if not isinstance(steps, list):
        return f"ERROR: the plan is not a list: {reply}"
    results = []
    for step in steps:
        name = step.get("tool") if isinstance(step, dict) else None
        if name not in executor_tools:
            results.append({"tool": name, "result": "skipped: not an allowed tool"})
            continue
        results.append({"tool": name, "result": await tool(name, **(step.get("args") or {}))})
    summary = str(
        await chat(
            f"Goal: {goal}\nResults: {json.dumps(results, default=str)}\nSummarize as FINISH: <answer>.",
            tool_name=tool_name,
        )
    )
    finished = _FINISH.search(summary)
    return finished.group(1).strip() if finished else summary


async def conversation(
    system: str,
    *,
    max_turns: int = 20,
    tool_name: str = "llm_inference",
    input_tool: str = "user_input",
    exit_word: str = "EXIT",
) -> list[dict[str, str]]:
    """Alternate user input (a tool) and LLM replies until the user types ``exit_word``."""
    history: list[dict[str, str]] = []
    for _ in range(max_turns):
        said = str(await tool(input_tool))
        if said.strip() == exit_word:
            break
        history.append({"role": "user", "content": said})
        prompt = "\n".join(f"{m['role']}: {m['content']}" for m in history)
        history.append({"role": "assistant", "content": str(await chat(prompt, system=system, tool_name=tool_name))})
    return history


async def supervisor(
    task: str, agents: list[str], *, tool_name: str = "llm_inference", max_rounds: int = 5
) -> str:
    """An LLM delegates sub-tasks to child agents (``DELEGATE: agent: task``) until ``FINISH``."""
    system = (
        "You coordinate these agents:\n" + _tool_list(agents) + "\n"
        "Reply with one line: DELEGATE: agent_name: sub-task, or FINISH: <answer>."
    )
    transcript = f"Task: {task}"
    for _ in range(max_rounds):
        reply = str(await chat(transcript, system=system, tool_name=tool_name))
        finished = _FINISH.search(reply)
        if finished:
            return finished.group(1).strip()
        delegated = _DELEGATE.search(reply)
        if not delegated or delegated.group(1) not in agents:
            transcript += f"\nYou said: {reply}\nReply with DELEGATE or FINISH."
            continue
        handle = await spawn(delegated.group(1))
        outcome = await join(handle)
        transcript += f"\n{delegated.group(1)} did {delegated.group(2).strip()!r}: {outcome}"
    return f"Stopped after {max_rounds} rounds: {task}"


async def run_task(
    goal: str, *, tools: list[str] | None = None, max_steps: int = 10, tool_name: str = "llm_inference"
) -> str:
    """The simplest entry: a ``react`` loop over the given tools."""
    return await react(goal, tools=tools or [], max_steps=max_steps, tool_name=tool_name)
