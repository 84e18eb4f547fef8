"""The public surface: exactly ``castor.__all__``; ``import castor`` loads neither redis nor celery."""

from __future__ import annotations

import subprocess
import sys

import pytest

import castor
import castor.lib

API_NAMES = {
    "AgentCheckpoint", "AgentRegistry", "Capability", "Castor", "CastorTask", "ExecutionSummary", "FlaggedStep",
    "ReplayDivergenceError", "SyscallProxy", "SyscallRecord", "auto_approve", "auto_reject", "castor_agent",
    "castor_tool", "default_agent_registry", "interactive",
}
# castor-kernel 0.5.1's castor.__all__: code written for it imports each of these from castor.
CASTOR_051_ALL = {
    "AgentCheckpoint", "AgentNotFoundError", "AgentRegistry", "AgentRegistryProtocol", "AgentRunner", "BudgetProtocol",
    "Capability", "CapabilityManager", "Castor", "ExecutionSummary", "SyscallGate", "MMU", "MMUProtocol",
    "CastorMessage", "CastorTask", "CheckpointStore", "CheckpointStoreProtocol", "GateProtocol", "HITLHandler",
    "InMemoryJournal", "JournalProtocol", "LLMSyscall", "StreamingLLMSyscall", "SuspendInterrupt", "SyscallProxy",
    "SyscallRecord", "SyscallRequest", "SyscallResponse", "SyscallResult", "MemoryCheckpointStore", "ToolMetadata",
    "auto_approve", "auto_reject", "castor_agent", "castor_tool", "default_agent_registry", "interactive",
}
LIB_NAMES = {
    "tool", "try_tool", "chat", "budget", "spawn", "join", "parallel", "map_reduce", "react", "plan_execute",
    "conversation", "supervisor", "run_task", "model_call", "complete", "stream", "tool_schemas", "Memory",
    "memory", "search_memory",
}


def test_published_names_are_kept() -> None:
    assert set(castor.__all__) >= API_NAMES | CASTOR_051_ALL
    assert set(castor.lib.__all__) == LIB_NAMES
    for name in castor.__all__:
        assert getattr(castor, name) is not None, name


def test_all_public_names_have_docstrings() -> None:
    for name in castor.__all__:
        obj = getattr(castor, name)
        if callable(obj) and not isinstance(obj, str):
            assert obj.__doc__, f"castor.{name} has no docstring"


@pytest.mark.fleet
def test_import_castor_loads_neither_redis_nor_celery_nor_an_http_client() -> None:
    code = (
        "import sys, castor, castor.lib, castor.frameworks; from castor import Castor; Castor(tools=[]); "
        "heavy = ('redis', 'celery', 'kombu', 'httpx', 'openai', 'anthropic', 'mcp', 'langchain_core', 'langgraph', "
        "'pydantic_ai', 'agents', 'smolagents', 'crewai'); "
        "bad = [m for m in heavy if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


BLOCK_EXTRAS = """
import sys

class Missing:
    # Behave as if the optional extras were not installed: `pip install -e .` has only pydantic.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("redis", "celery", "kombu", "flower"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Missing())
from castor.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.fleet
def test_cli_and_demo_work_without_the_extras(tmp_path: object) -> None:
    for args in (["--help"], ["demo"], ["budget", "--help"], ["submit", "--help"]):
        done = subprocess.run(
            [sys.executable, "-c", BLOCK_EXTRAS, *args], capture_output=True, text=True, timeout=120, cwd=str(tmp_path)
        )
        assert done.returncode == 0, (args, done.stdout[-500:], done.stderr[-2000:])
    demo = subprocess.run(
        [sys.executable, "-c", BLOCK_EXTRAS, "demo"], capture_output=True, text=True, timeout=120, cwd=str(tmp_path)
    )
    assert "Level 3" in demo.stdout and demo.returncode == 0
