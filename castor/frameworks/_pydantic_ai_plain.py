"""Whether a pydantic-ai agent and the options of its ``run`` leave a late start the whole loop's result
(``castor.frameworks._pydantic_ai_resume``).

A late start skips pydantic-ai's loop over the journaled steps: whatever the loop would have run there and
the journal does not hold is not run. That is harmless for an agent whose every step is its model's answer
and its tools' results (both journaled) with requests made of static parts (checked against the journal at
the landing step), and for nothing else. So the agent must have no code of its own that runs at each step
or reads the run's state: no capabilities but those pydantic-ai adds to every agent, no event listeners,
no system prompt or instruction functions (they may read the run's step, prompt or deps, which a late
start has otherwise), no output validators or output functions, static model settings and metadata, and
function tools (an MCP server's, which ``guard()`` makes function tools) without ``prepare``, args
validators, approval or deferred loading. A test of this kind reads a few of the agent's private fields
(pydantic-ai keeps them there); a field that is not found makes the agent not plain, so a pydantic-ai
that moves them replays the whole loop.
"""

from __future__ import annotations

from typing import Any

from pydantic_ai import Agent
from pydantic_ai.capabilities import CombinedCapability, ToolSearch
from pydantic_ai.capabilities._pending_messages import PendingMessageDrainCapability
from pydantic_ai.toolsets import AbstractToolset, CombinedToolset, FunctionToolset, PrefixedToolset

# The options of ``run`` that leave the loop as it is when they hold data (a callable model setting,
# instruction or metadata runs at each step); the others (a conversation, deferred tool results, another
# model, output type, toolsets or capabilities, an event handler, a timeout, a workspace) replay the whole loop.
_PLAIN_OPTIONS = frozenset({
    "message_history", "deps", "usage", "usage_limits", "model_settings", "metadata", "instructions",
    "infer_name", "retries", "run_id", "conversation_id",
})
_UNSET = {"compact": False}  # an option given its default is not given (run_sync passes every option)
# The capabilities pydantic-ai gives every agent: tool search (idle without deferred-loading tools, which a
# plain agent has none of) and the queue of enqueued messages (idle unless a tool enqueues, which a
# guarded tool cannot: it has no RunContext).
_EVERY_AGENTS = (ToolSearch, PendingMessageDrainCapability)
_MISSING = object()


def plain_options(options: dict[str, Any]) -> bool:
    """Whether ``run(**options)`` runs the loop the same whatever step it starts at."""
    given = {k for k, v in options.items() if v is not None and not (k in _UNSET and v == _UNSET[k])}
    if given - _PLAIN_OPTIONS:
        return False
    if callable(options.get("model_settings")) or callable(options.get("metadata")):
        return False
    return _static(options.get("instructions"))


def plain_agent(agent: Agent[Any, Any]) -> bool:
    """Whether ``agent`` runs nothing of its own at a step but its model request and its tools (module doc)."""
    found: dict[str, Any] = {name: getattr(agent, name, _MISSING) for name in (
        "_system_prompts", "_system_prompt_functions", "_system_prompt_dynamic_functions", "_instructions",
        "_cap_instructions", "_output_validators", "_dynamic_toolsets", "_event_hooks", "_metadata",
        "_cap_model_settings",
    )}
    if _MISSING in found.values() or not all(isinstance(p, str) for p in found["_system_prompts"]):
        return False
    if (found["_system_prompt_functions"] or found["_system_prompt_dynamic_functions"] or found["_cap_instructions"]
            or found["_output_validators"] or found["_dynamic_toolsets"] or agent.event_stream_handler is not None):
        return False
    if getattr(found["_event_hooks"], "_registry", True):  # listeners of @agent.on_event
        return False
    if callable(agent.model_settings) or callable(found["_cap_model_settings"]) or callable(found["_metadata"]):
        return False
    if not all(isinstance(getattr(i, "instruction", None), str) for i in found["_instructions"]):
        return False
    return _only_every_agents(agent.root_capability) and isinstance(agent.output_type, type) and all(
        _plain_toolset(t) for t in agent.toolsets
    )


def _static(instructions: Any) -> bool:
    if instructions is None or isinstance(instructions, str):
        return True
    return isinstance(instructions, list | tuple) and all(isinstance(i, str) for i in instructions)


def _only_every_agents(capability: Any) -> bool:
    if isinstance(capability, CombinedCapability):
        return all(_only_every_agents(c) for c in capability.capabilities)
    return type(capability) in _EVERY_AGENTS


def _plain_toolset(toolset: AbstractToolset[Any]) -> bool:
    if type(toolset).__name__ == "MCPToolset":  # guard() puts function tools of its server's in its place
        return True
    if isinstance(toolset, PrefixedToolset):
        return _plain_toolset(toolset.wrapped)
    if isinstance(toolset, CombinedToolset):
        return all(_plain_toolset(t) for t in toolset.toolsets)
    if not isinstance(toolset, FunctionToolset):  # a wrapper that prepares, filters or defers its tools
        return False
    if toolset.requires_approval or getattr(toolset, "_defer_loading", True) or getattr(toolset, "_instructions", True):
        return False
    return all(_plain_tool(t) for t in toolset.tools.values())


def _plain_tool(tool: Any) -> bool:
    return not (tool.prepare or tool.args_validator or tool.requires_approval or tool.defer_loading
                or tool.tool_kind is not None)
