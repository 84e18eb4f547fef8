"""The code a coordinator may import: the agents of ``[coordinator] agents`` and the tools of ``[tools] import``.

A run names its agent and tools by import spec, and a coordinator imports what the run names. Whoever can
write a run to the fleet's Redis could otherwise have every coordinator import (and run) any module on its
path, ``os:system`` included. With ``[coordinator] agents`` set, a coordinator imports only what the config
lists, as a Celery worker runs only its registered tasks and a Temporal worker its registered workflows;
anything else is refused before any import, with the spec and the config key named. The coordinator then
sets the run aside (``castor.fleet.scheduler._runs``): one started with a config that lists it takes it
over. ``castor submit`` refuses such an agent at once.

A file spec is compared by its absolute path, made from the working directory of the process that reads it
(the config's relative paths, like ``[tools] import``'s, are the coordinator's; ``castor submit`` records
absolute paths). An entry without function names allows every function of its file or module.
"""

from __future__ import annotations

from dataclasses import dataclass

from castor.checkpoint import RunSpec
from castor.errors import ConfigError
from castor.fleet.loading import ImportSpec, parse_spec
from castor.settings import Settings


@dataclass(frozen=True)
class AllowedCode:
    """The agents and tools a coordinator imports; ``None`` from ``of`` when the config lists no agents."""

    agents: tuple[ImportSpec, ...]
    tools: frozenset[str]
    source: str

    @classmethod
    def of(cls, settings: Settings) -> AllowedCode | None:
        """The config's list, or None (any agent: the default, with a warning at the coordinator's start)."""
        if not settings.coordinator.agents:
            return None
        agents = tuple(parse_spec(spec, "agent").absolute() for spec in settings.coordinator.agents)
        specs = (parse_spec(spec, "tool").absolute() for spec in settings.tools.imports)
        tools = frozenset(str(one) for spec in specs for one in spec.each())
        return cls(agents, tools, str(settings.source))

    def check(self, spec: RunSpec) -> None:
        """``ConfigError`` naming the first of the run's agent and tools the config does not list."""
        self.check_agent(spec.agent)
        for tool in spec.tools:
            single = str(parse_spec(tool, "tool").absolute())
            if single not in self.tools:
                raise ConfigError(f"tool {tool!r} is not among [tools] import of {self.source}: not imported")

    def check_agent(self, agent: str) -> None:
        """``ConfigError`` unless ``agent`` is one of ``[coordinator] agents``."""
        wanted = parse_spec(agent, "agent").absolute()
        for allowed in self.agents:
            if allowed.target == wanted.target and (not allowed.names or set(wanted.names) <= set(allowed.names)):
                return
        raise ConfigError(f"agent {agent!r} is not among [coordinator] agents of {self.source}: not imported")
