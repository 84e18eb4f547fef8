"""The public surface: exactly ``castor.__all__``; ``import castor`` loads neither redis nor celery."""

from __future__ import annotations

import subprocess
import sys

import castor
import castor.lib

API_NAMES = {
    "AgentCheckpoint", "AgentRegistry", "Capability", "Castor", "CastorTask", "ExecutionSummary", "FlaggedStep",
    "ReplayDivergenceError", "SyscallProxy", "SyscallRecord", "auto_approve", "auto_reject", "castor_agent",
    "castor_tool", "default_agent_registry", "interactive",
}
LIB_NAMES = {
    "tool", "try_tool", "chat", "budget", "spawn", "join", "parallel", "map_reduce", "react", "plan_execute",
    "conversation", "supervisor", "run_task",
}


def test_published_names_are_kept() -> None:
    assert set(castor.__all__) >= API_NAMES
    assert set(castor.lib.__all__) == LIB_NAMES
    for name in castor.__all__:
        assert getattr(castor, name) is not None, name


def test_all_public_names_have_docstrings() -> None:
    for name in castor.__all__:
        obj = getattr(castor, name)
        if callable(obj) and not isinstance(obj, str):
            assert obj.__doc__, f"castor.{name} has no docstring"


def test_import_castor_loads_neither_redis_nor_celery() -> None:
    code = (
        "import sys, castor, castor.lib; from castor import Castor; Castor(tools=[]); "
        "bad = [m for m in ('redis', 'celery', 'kombu') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
