"""A guarded agent's tools with their definitions made as pydantic-ai sends them, not copied at every step.

pydantic-ai makes each function tool's definition anew at every step and then copies it twice more on its
way to the model: the agent's combined toolset stamps it with its toolset's id (``<agent>`` for the agent's
own tools), and the model's ``prepare_request`` drops the return schema of every tool that did not ask for
it (``include_return_schema``), copying the request parameters with it
(``pydantic_ai.models.prepare_return_schemas``). Each copy of a ``ToolDefinition`` costs about 40k
instructions (callgrind), a step's three about 120k, more than a guarded step's conversions. The guard's
copy of such a tool (``as_sent``) makes its definition with both already so, and pydantic-ai copies
nothing: the model is sent what it was sent before.

Only for a run where nothing but pydantic-ai's own listing and the model's ``prepare_request`` reads a
tool's definition (``lean_run``): an agent that runs nothing of its own at a step
(``_pydantic_ai_plain.plain_agent``: no capabilities but those pydantic-ai gives every agent, so no
``prepare_tools`` hook), no capabilities or spec given to the run or to an ``override`` in force, no
instrumentation (its span attribute holds the definitions before they are prepared), and one of
pydantic-ai's own models (each prepares its request first). Anything else runs with the tools as they are.
Two of the agent's private attributes are read here; ``tests/frameworks/test_pydantic_ai_schemas.py`` fails
if pydantic-ai moves them (missing, the tools stay as they are) or sends other definitions.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic_ai import Agent, Tool
from pydantic_ai.models import Model
from pydantic_ai.tools import ToolDefinition
from pydantic_ai.toolsets.abstract import AGENT_TOOLSET_ID

from castor.frameworks._pydantic_ai_plain import plain_agent


class _SentTool(Tool[Any]):
    """A tool of the agent's own whose definition is made as the model is sent it (module doc)."""

    @property
    def tool_def(self) -> ToolDefinition:
        """``Tool.tool_def`` with the agent toolset's id, and no return schema unless asked for: set on the
        new definition itself, which nothing else holds yet."""
        definition = super().tool_def
        definition.toolset_id = AGENT_TOOLSET_ID  # what the combined toolset would stamp on a copy
        if not self.include_return_schema:
            definition.return_schema = None  # what prepare_return_schemas would leave of it, on a copy
        return definition


def as_sent(tool: Tool[Any]) -> Tool[Any]:
    """A copy of ``tool`` whose definition is made as sent (``_SentTool``), unless it prepares its own
    definition or is of a class of its own (then ``tool`` itself: its class may make it otherwise)."""
    if type(tool) is not Tool or tool.prepare is not None:
        return tool
    sent = copy.copy(tool)
    sent.__class__ = _SentTool  # the same fields; only its definition is made otherwise
    return sent


_MISSING = object()


def lean_run(agent: Any, model: Model, options: dict[str, Any]) -> bool:
    """Whether a run of ``agent`` (``iter(**options)``) with ``model`` reads its tools' definitions only in
    pydantic-ai's listing and the model's ``prepare_request`` (module doc)."""
    if options.get("capabilities") or options.get("spec") is not None or not isinstance(agent, Agent):
        return False
    if not type(model).__module__.startswith("pydantic_ai.models."):
        return False
    override: Any = getattr(agent, "_override_root_capability", _MISSING)  # override(capabilities=...) in force
    instrumentation: Any = getattr(agent, "_resolve_instrumentation_settings", _MISSING)
    if override is _MISSING or instrumentation is _MISSING or override.get() is not None or instrumentation():
        return False
    return plain_agent(agent)


__all__ = ["as_sent", "lean_run"]
