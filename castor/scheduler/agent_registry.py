"""castor-kernel 0.5.1's ``castor.scheduler.agent_registry``: named child agents (``castor.agents``)."""

from castor.agents import AgentNotFoundError, AgentRegistry, castor_agent, default_agent_registry

__all__ = ["AgentNotFoundError", "AgentRegistry", "castor_agent", "default_agent_registry"]
