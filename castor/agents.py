"""Named agents that a run can spawn as children: ``AgentRegistry`` and ``@castor_agent``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from castor.errors import CastorError


class AgentNotFoundError(CastorError, KeyError):
    """``spawn`` named an agent that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0])


class AgentRegistry:
    """Agent functions by name."""

    def __init__(self) -> None:
        self._agents: dict[str, Callable[..., Any]] = {}

    def register(self, name: str, func: Callable[..., Any]) -> None:
        """Register ``func`` under ``name`` (a second registration replaces the first)."""
        self._agents[name] = func

    def get(self, name: str) -> Callable[..., Any]:
        """The agent called ``name``; ``AgentNotFoundError`` if none."""
        try:
            return self._agents[name]
        except KeyError:
            known = ", ".join(sorted(self._agents)) or "none"
            raise AgentNotFoundError(f"no agent named {name!r} is registered (registered: {known})") from None

    def has_agent(self, name: str) -> bool:
        """Whether ``name`` is registered."""
        return name in self._agents

    def list_agents(self) -> list[str]:
        """Registered names."""
        return sorted(self._agents)


default_agent_registry = AgentRegistry()


def castor_agent(name: str | None = None, *, registry: AgentRegistry | None = None) -> Callable[..., Any]:
    """Register the decorated agent function for ``spawn`` (under its own name unless ``name``)."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        (registry or default_agent_registry).register(name or func.__name__, func)
        return func

    return register
