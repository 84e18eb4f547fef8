"""castor-kernel 0.5.1's ``MMUProtocol``: what ``Castor(lodge=...)`` expects of a context-window MMU."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from castor.checkpoint import AgentCheckpoint


@runtime_checkable
class MMUProtocol(Protocol):
    """A context-window MMU: its kernel-internal tool names, and the hook run before a model call."""

    @property
    def kernel_tool_names(self) -> set[str]:
        """Its own steps in a journal."""
        ...

    async def check_and_evict(self, proxy: Any, checkpoint: AgentCheckpoint) -> None:
        """Make the run's context fit before a model call."""
        ...
