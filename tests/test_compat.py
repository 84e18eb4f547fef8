"""castor-kernel 0.5.1's names and ``Castor()`` options: honoured through an equivalent, or refused with an
error naming what to use instead, never silently ignored."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import castor
from castor import (
    AgentRegistry,
    AgentRegistryProtocol,
    Castor,
    CheckpointStore,
    ConfigError,
    MemoryCheckpointStore,
    RunNotFoundError,
    SuspendInterrupt,
    SyscallGate,
    SyscallRequest,
    SyscallResponse,
    UnsupportedError,
    castor_tool,
)
from castor.lib import tool
from castor.registry import ToolRegistry

# Each name Castor has no equivalent for, and a word of what its error tells the user to use instead.
REFUSED = {
    "BudgetProtocol": "budgets=", "HITLHandler": "kernel.approve",
    "AgentRunner": "run_async", "InMemoryJournal": "syscall_log", "JournalProtocol": "castor.seams.Journal",
    "CheckpointStoreProtocol": "castor.seams.Backend", "GateProtocol": "SyscallGate",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_name_without_equivalent_refuses_every_use_naming_what_to_use(name: str) -> None:
    placeholder = getattr(castor, name)
    match = f"castor.{name} \\(castor-kernel 0.5.1\\) is not provided: .*{re.escape(REFUSED[name])}"
    with pytest.raises(UnsupportedError, match=match):
        placeholder()
    with pytest.raises(UnsupportedError, match=match):
        isinstance(object(), placeholder)
    with pytest.raises(UnsupportedError, match=match):

        class Mine(placeholder):  # type: ignore[misc, valid-type]
            pass
    assert issubclass(UnsupportedError, NotImplementedError)


@pytest.mark.parametrize(
    ("option", "hint"),
    [
        ("lodge", "castor.MMU"), ("capability_manager", "budgets="), ("roche", "tools="),
        ("gate", "SyscallGate(registry)"),
    ],
)
def test_castor_refuses_options_it_cannot_honour(option: str, hint: str) -> None:
    with pytest.raises(UnsupportedError, match=f"Castor\\((mmu=/)?{option}=.*{re.escape(hint)}"):
        Castor(tools=[], **{option: object()})
    Castor(tools=[], **{option: None})  # 0.5.1's default: nothing asked for


async def test_the_default_capability_manager_is_the_kernels_own_budgets() -> None:
    manager = castor.CapabilityManager()

    def search(query: str) -> str:
        return query

    async def agent() -> object:
        return [await tool("search", query="a"), await tool("search", query="b")]

    cp = await Castor(tools=[search], capability_manager=manager).run(agent, budgets={"api": 1})
    assert cp.result[1]["status"] == "INSUFFICIENT_CAPABILITY"  # the kernel's budgets apply

    class Custom(castor.CapabilityManager):
        pass

    with pytest.raises(UnsupportedError, match="custom budget manager is not supported"):
        Castor(tools=[search], capability_manager=Custom())
    assert manager.create_capabilities({"api": 5}) == {"api": castor.Capability(resource_type="api", max_budget=5)}
    with pytest.raises(UnsupportedError, match=r"CapabilityManager\.deduct\(\) .* is not provided: budgets"):
        manager.deduct({}, "api", 1.0)


async def test_gate_over_a_registry_runs_its_tools_with_the_operators_policy() -> None:
    registry = ToolRegistry()

    @castor_tool(registry=registry, cost_per_use=2)
    async def search(query: str) -> str:
        return f"found {query}"

    @castor_tool(registry=registry)
    def wipe(path: str) -> str:
        return f"wiped {path}"

    gate = SyscallGate(registry)
    assert gate.list_tools() == ["search", "wipe"] and gate.has_tool("wipe")
    assert await gate.execute("search", gate.validate("search", {"query": "x"})) == "found x"
    with pytest.raises(ValueError, match="query"):
        gate.validate("search", {})

    async def agent() -> object:
        return [await tool("search", query="logs"), await tool("wipe", path="/tmp/a")]

    kernel = Castor(gate=gate, destructive=["wipe"])
    cp = await kernel.run(agent, budgets={"api": 10})
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_tool == "wipe" and cp.budget_used("api") == 2
    await kernel.approve(cp)
    cp = await kernel.run(agent, checkpoint=cp)
    assert cp.result == ["found logs", "wiped /tmp/a"]


def test_castor_tool_registry_must_be_a_tool_registry() -> None:
    with pytest.raises(castor.ConfigError, match="ToolRegistry"):
        castor_tool(registry=AgentRegistry())(lambda: None)


async def test_checkpoint_store_is_a_store_castor_takes(tmp_path: Path) -> None:
    async def agent() -> object:
        return await tool("wipe", path="/tmp/b")

    def wipe(path: str) -> str:
        return f"wiped {path}"

    url = f"sqlite:///{tmp_path}/castor.db"
    store = CheckpointStore(url)
    cp = await Castor(tools=[wipe], destructive=["wipe"], store=store).run(agent, pid="p1")
    again = CheckpointStore(url)  # another handle on the same file sees the run, synchronously
    assert again.list_pids() == ["p1"] and again.load("p1").pending_args == {"path": "/tmp/b"}
    again.delete("p1")
    with pytest.raises(RunNotFoundError):
        again.load("p1")
    with pytest.raises(UnsupportedError, match="write-ahead log"):
        again.write_wal("p1", 0, "wipe", {}, {})

    memory = MemoryCheckpointStore()
    memory.save(cp)
    assert memory.load("p1").pending_tool == "wipe" and memory.list_pids() == ["p1"]


async def test_suspend_interrupt_is_what_unwinds_a_suspended_agent() -> None:
    seen: list[str] = []

    def wipe(path: str) -> str:
        return path

    async def agent() -> object:
        try:
            return await tool("wipe", path="/x")
        except SuspendInterrupt:
            seen.append("suspended")
            raise

    cp = await Castor(tools=[wipe], destructive=["wipe"]).run(agent)
    assert cp.is_suspended and seen == ["suspended"]


def test_data_records_and_the_agent_registry_protocol() -> None:
    request = SyscallRequest(caller_pid="p", tool_name="search", arguments={"q": 1})
    assert request.model_dump() == {"caller_pid": "p", "tool_name": "search", "arguments": {"q": 1}}
    assert SyscallResponse(status="HITL_REJECTED", human_feedback="no").human_feedback == "no"
    assert isinstance(AgentRegistry(), AgentRegistryProtocol)


# castor-kernel 0.5.1's module paths for stable names, and names each must provide.
MODULE_PATHS = {
    "castor.gate.registry": ["ToolRegistry", "ToolMetadata", "ToolNotFoundError"],
    "castor.gate.decorator": ["castor_tool"],
    "castor.gate.validator": ["SyscallGate"],
    "castor.capability.manager": ["CapabilityManager"],
    "castor.models.checkpoint": ["AgentCheckpoint", "SyscallRecord", "CastorMessage", "SuspendInterrupt"],
    "castor.models.capability": ["Capability", "SyscallRequest", "SyscallResponse"],
    "castor.models.result": ["SyscallResult"],
    "castor.scheduler.proxy": ["SyscallProxy", "ReplayDivergenceError"],
    "castor.scheduler.runner": ["AgentRunner"],
    "castor.scheduler.hitl": ["HITLHandler"],
    "castor.scheduler.persistence": ["CheckpointStore", "MemoryCheckpointStore", "CheckpointNotFoundError"],
    "castor.scheduler.agent_registry": [
        "AgentRegistry", "castor_agent", "AgentNotFoundError", "default_agent_registry",
    ],
    "castor.lib._context": ["get_proxy", "set_proxy"],
    "castor.kernel.journal": ["InMemoryJournal"],
    "castor.kernel.decisions": ["ReplayDivergenceError"],
    "castor.kernel": ["Castor", "CastorTask", "CastorWarning"],
    "castor.core": ["Castor", "CastorTask"],
    "castor.hitl_policies": ["auto_approve", "auto_reject", "interactive"],
    "castor.mmu": ["MMU", "MMUProtocol", "CastorMessage"],
    "castor.mmu.core": ["MMU", "PAGE_OUT_TOOL", "SEARCH_MEMORY_TOOL"],
    "castor.mmu.driver": ["SemanticMemoryDriver"],
    "castor.mmu.token_counter": ["TokenCounter", "CharCountEstimator"],
    "castor.mmu.drivers.mock_driver": ["InMemoryDriver"],
    "castor.llm.wrapper": ["LLMSyscall", "StreamingLLMSyscall"],
    "castor.llm": ["LLMSyscall", "StreamingLLMSyscall"],
}


@pytest.mark.parametrize("path", sorted(MODULE_PATHS))
def test_051_module_paths_import_castors_own_names(path: str) -> None:
    module = importlib.import_module(path)
    for name in MODULE_PATHS[path]:
        value = getattr(module, name)
        assert value is getattr(castor, name, value), f"{path}.{name} is not castor.{name}"


def test_051_kernel_decisions_say_what_decides_here() -> None:
    from castor.kernel import decisions

    for name in ("decide_syscall", "ReplayHit", "Suspend", "Deny", "Allow"):
        with pytest.raises(UnsupportedError, match=r"syscall handler chain decides .*Castor\(interceptors="):
            getattr(decisions, name)()


async def test_get_proxy_is_the_current_runs_proxy() -> None:
    from castor.lib._context import get_proxy, set_proxy

    async def agent() -> object:
        return await get_proxy().syscall("wipe", {"path": "/p"})

    def wipe(path: str) -> str:
        return f"wiped {path}"

    assert (await Castor(tools=[wipe]).run(agent)).result == "wiped /p"
    with pytest.raises(RuntimeError, match=r"inside Castor\.run"):
        get_proxy()
    with pytest.raises(UnsupportedError, match=r"castor\.lib finds it"):
        set_proxy(object())
    with pytest.raises(UnsupportedError, match=r"the kernel builds the proxy; run the agent with Castor"):
        castor.SyscallProxy(castor.AgentCheckpoint(pid="p", status="RUNNING", agent_function_name="a",
                                                   capabilities={}), SyscallGate(ToolRegistry()))


async def test_syscall_result_is_built_and_read_as_in_051() -> None:
    rejected = castor.SyscallResult(status="HITL_REJECTED", feedback="too risky")
    assert rejected.rejected and not rejected.ok and rejected.value is None and rejected.feedback == "too risky"
    assert castor.SyscallResult(value=42).ok

    def search(query: str) -> str:
        return query

    async def agent() -> object:
        return await tool("search", query="q")

    cp = await Castor(tools=[search], structured_results=True).run(agent, budgets={"api": 0})
    assert cp.result.exhausted and cp.result.resource == "api"


@pytest.mark.fleet
def test_python_dash_m_castor_cli_is_the_castor_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "castor.cli", "--db", str(tmp_path / "castor.db"), "ps"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert done.returncode == 0 and done.stdout == "No agents found.\n", done.stderr


async def test_the_legacy_proxy_reads_its_checkpoint_and_spawns_synchronously() -> None:
    agents = AgentRegistry()

    @castor.castor_agent("echo", registry=agents)
    async def echo(proxy: castor.SyscallProxy) -> str:
        return str(await proxy.search(query="child"))

    def search(query: str) -> str:
        return query

    async def parent(proxy: castor.SyscallProxy) -> object:
        await proxy.search(query="me")
        used = proxy.checkpoint.budget_used("api")  # 0.5.1's examples read the live checkpoint
        return used, await proxy.spawn_sync("echo", capabilities={"api": 2})

    cp = await Castor(tools=[search], agent_registry=agents).run(parent, budgets={"api": 5})
    assert cp.result == (1.0, "child")


async def test_tool_metadata_registers_as_0_5_1_code_builds_it() -> None:
    """0.5.1's ToolRegistry.register(ToolMetadata): the cost and policy as stated, a re-registration
    replacing the first, and the kernel charging and gating what was registered."""
    from castor import ToolMetadata

    registry = ToolRegistry()

    def fetch(url: str, retries: int = 2) -> str:
        return f"{url}:{retries}"

    def drop(table: str) -> str:
        return f"dropped {table}"

    registry.register(ToolMetadata(tool_name="fetch", consumes="net", cost_per_use=1.0, func=fetch))
    registry.register(ToolMetadata(tool_name="fetch", consumes="net", cost_per_use=3.0, func=fetch))
    registry.register(ToolMetadata(tool_name="drop", consumes="db", cost_per_use=1.0, destructive=True, func=drop))
    assert registry.list_tools() == ["drop", "fetch"] and registry.has_tool("fetch")
    spec = registry.get("fetch")
    assert (spec.consumes, spec.cost_per_use, spec.tool_name) == ("net", 3.0, "fetch")
    assert spec.input_schema["required"] == ["url"] and spec.input_schema["properties"]["retries"]["type"] == "integer"
    gate = SyscallGate(registry)
    assert gate.validate("fetch", {"url": "u"}) == {"url": "u", "retries": 2}
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        gate.validate("fetch", {"retries": "many"})
    answer = gate.format_validation_error("fetch", caught.value)
    assert answer.status == "VALIDATION_ERROR" and "url" in answer.feedback_message

    async def agent() -> object:
        return [await tool("fetch", url="a"), await tool("drop", table="t")]

    kernel = Castor(gate=gate)
    assert kernel.gate.get_tool_meta("drop").destructive and kernel.gate.list_tools() == ["drop", "fetch"]
    cp = await kernel.run(agent, budgets={"net": 10})
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.capabilities["net"].current_usage == 3.0
    with pytest.raises(ConfigError, match="ToolMetadata"):
        registry.register(fetch)  # type: ignore[arg-type]


def test_castor_tool_attaches_0_5_1_metadata() -> None:
    @castor_tool(consumes="net", cost_per_use=2.0)
    def probe(host: str) -> str:
        return host

    meta = probe._castor_metadata  # type: ignore[attr-defined]
    assert (meta.tool_name, meta.consumes, meta.cost_per_use, meta.func) == ("probe", "net", 2.0, probe)
    assert meta.input_schema["properties"]["host"]["type"] == "string"
