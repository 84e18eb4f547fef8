"""The agent's side of Castor: what agent code imports. It never touches the kernel directly.

    from castor.lib import tool
    results = await tool("search", query="old logs")
    reply = await complete(prompt="Summarise the results")   # a model call: a syscall too

Every call is a syscall through the kernel of the run it executes in, reached through that run's
context (``castor.kernel.context``) and nothing else of the kernel; outside a run (or after the run
ended) it raises ``RunEndedError``, a ``RuntimeError``.
"""

from castor.lib.models import complete, model_call, tool_schemas
from castor.lib.patterns import conversation, map_reduce, plan_execute, react, run_task, supervisor
from castor.lib.primitives import budget, chat, join, parallel, spawn, tool, try_tool
from castor.lib.streaming import stream
from castor.mmu.agent import Memory, memory, search_memory

__all__ = [
    "Memory",
    "budget",
    "chat",
    "complete",
    "conversation",
    "join",
    "map_reduce",
    "memory",
    "model_call",
    "parallel",
    "plan_execute",
    "react",
    "run_task",
    "search_memory",
    "spawn",
    "stream",
    "supervisor",
    "tool",
    "tool_schemas",
    "try_tool",
]
