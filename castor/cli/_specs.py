"""How the CLI finds a run's agent and tools by import spec, and how a later command finds them again.

The spec forms and their one parser are ``castor._imports`` (shared with the workers and coordinators);
here a module spec is also found from the working directory, as ``python -m`` finds it. A run records
the specs of its agent and tools on its checkpoint (``RunSpec``), with file paths made absolute and the
hashes of their source files (``castor._code``, the same stamp coordinators check), so ``approve``,
``resume`` or ``fork`` in another process rebuilds the same kernel and knows whether its code changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from castor import _code, _imports
from castor._imports import parse_spec
from castor.checkpoint import RunSpec
from castor.kernel import Castor
from castor.seams import Backend, ToolCall


def absolute(spec: str) -> str:
    """The spec with its file path made absolute, as it is recorded on the run."""
    return str(parse_spec(spec).absolute())


def load_agent(spec: str) -> Callable[..., Any]:
    """The agent function a spec names (a module is found from the working directory too)."""
    return _imports.load_agent(spec, from_cwd=True)


def load_tools(specs: Iterable[str]) -> list[Callable[..., Any]]:
    """The tool functions the specs name, in order (each registered under its own name)."""
    return [func for _, func in _imports.load_tools(specs, from_cwd=True)]


class CountingExecutor:
    """Wraps the kernel's executor and counts the tool calls it really executes (not the replayed ones)."""

    def __init__(self, inner: Any, provider: Any = None) -> None:
        self.inner = inner
        self.provider = provider  # a model provider this process calls (its HTTP client closed with the executor)
        self.writes_journal = inner.writes_journal
        self.model_provider = getattr(inner, "model_provider", None)  # a fleet's llm pool (castor.llm.fleet)
        self.executed = 0

    def execute(self, call: ToolCall) -> Any:
        """Count, then delegate."""
        self.executed += 1
        return self.inner.execute(call)

    async def close(self) -> None:
        """Close the wrapped executor (and the model provider's connections)."""
        await self.inner.close()
        aclose = getattr(self.provider, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass
class Loaded:
    """An agent and its tools imported from specs, and the spec to record on the run."""

    agent: Callable[..., Any]
    tools: list[Callable[..., Any]]
    spec: RunSpec
    counter: list[CountingExecutor] = field(default_factory=list)

    def kernel(
        self, backend: Backend, executor: Callable[[Any], Any] | None = None, destructive: Iterable[str] = (),
        llm: Any = None, provider: Any = None,
    ) -> Castor:
        """A kernel with these tools on ``backend``, its executor made by ``executor`` (from the tool
        registry; default: in this process), counting executed calls; ``destructive`` adds to the spec's;
        ``llm`` is the config's ``[llm]`` section (model prices and deadline), ``provider`` the model provider
        this process calls itself (``castor.llm.fleet.local_provider``; a fleet executor brings its pool's)."""
        from castor.executors.local import LocalExecutor

        make = executor or LocalExecutor

        def counting(registry: Any) -> CountingExecutor:
            counted = CountingExecutor(make(registry), provider)
            self.counter.append(counted)
            return counted

        # The config's destructive list names tools of its whole fleet: those this run does not take are not
        # its concern (the run's own --destructive names are checked, as they must name its tools).
        names = {name for spec in self.spec.tools for name in parse_spec(spec, "tool").names}
        marked = sorted({*self.spec.destructive, *(name for name in destructive if name in names)})
        llm_options = {"llm_prices": llm.prices, "llm_timeout": llm.timeout} if llm is not None else {}
        return Castor(tools=self.tools, destructive=marked, store=backend, executor=counting, llm=provider,
                      **llm_options)

    @property
    def executed(self) -> int:
        """Tool calls executed by kernels built from this (replayed steps are not executed)."""
        return sum(c.executed for c in self.counter)


def load(agent: str, tools: Iterable[str], destructive: Iterable[str]) -> Loaded:
    """Import a new run's agent and tools and build the spec it records."""
    tool_specs = [absolute(spec) for spec in tools]
    agent_spec = absolute(agent)
    loaded_agent = load_agent(agent_spec)
    loaded_tools = load_tools(tool_specs)
    spec = _code.run_spec(agent_spec, tool_specs, destructive)  # hashed the way coordinators check it
    return Loaded(loaded_agent, loaded_tools, spec)


def reload(spec: RunSpec) -> tuple[Loaded, list[str]]:
    """Import a recorded run's agent and tools again, with the source files that changed since it started."""
    loaded = Loaded(load_agent(spec.agent), load_tools(spec.tools), spec)
    return loaded, _code.changed_files(spec)
