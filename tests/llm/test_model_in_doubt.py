"""A model call in doubt (``[llm] in_doubt``, ``Castor(llm_in_doubt=...)``): a coordinator's own model call whose
process was lost mid-call. Its claim is held by a dead process and its reservation is still charged, as a killed
drive leaves them; the drive that reaches the step makes it again (retry, the default), asks a human (ask), or
fails (fail). The first call stays charged: the provider may have billed it."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from castor import Castor
from castor.backends.sqlite import sqlite_backend
from castor.checkpoint import run_usage
from castor.errors import ConfigError, InDoubtError
from castor.kernel.claims import LEASE
from castor.lib import complete
from castor.llm import ModelCallError
from castor.llm.cost import reservation
from castor.seams import Backend

REQUEST = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
USED = {"input_tokens": 3, "output_tokens": 2}


def dead_holder() -> str:
    """A claim holder of this machine whose process has exited (as a killed coordinator's)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}:lost"


async def left_in_doubt(backend: Backend, pid: str) -> dict[str, float]:
    """What a drive killed mid-call leaves: the step's claim held by a dead process, its reservation charged."""
    reserve = dict(reservation(None, REQUEST, 8))
    assert (await backend.budgets.charge(pid, 0, reserve, ["team"])).ok
    assert (await backend.journal.claim(pid, 0, 0, dead_holder(), LEASE)).state == "claimed"
    return reserve


class Model:
    """A framework's model (``invoke``): counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def invoke(self, request: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        return {"text": "again", "usage": USED}


async def kernel_with_lost_call(tmp_path: Path, policy: str | None) -> tuple[Castor, Model, dict[str, float]]:
    backend = sqlite_backend(str(tmp_path / "castor.db"))
    backend.leased = True  # a fleet coordinator's store: its own model calls are claimed
    model = Model()
    options = {} if policy is None else {"llm_in_doubt": policy}
    kernel = Castor(store=backend, scopes=["team"], llm=_Provider(model), **options)
    await backend.budgets.set_scope("team", {"tokens": 1_000})
    reserve = await left_in_doubt(backend, "lost")
    return kernel, model, reserve


class _Provider:
    model = "framework"

    def __init__(self, model: Model) -> None:
        self.complete = model.invoke


async def agent() -> str:
    return (await complete(prompt="hello", max_tokens=8)).text


async def test_by_default_a_model_call_in_doubt_is_made_once_more_and_both_calls_are_charged(tmp_path: Path) -> None:
    kernel, model, reserve = await kernel_with_lost_call(tmp_path, None)
    cp = await kernel.run(agent, pid="lost")
    assert cp.status == "COMPLETED" and cp.result == "again" and model.calls == 1
    (failure,) = cp.failures
    assert failure.error_type == "InDoubtError" and failure.charged == reserve  # the first call's reservation
    assert cp.syscall_log[0].charged == {**USED, "tokens": 5}
    both = reserve["tokens"] + 5
    assert await kernel.backend.budgets.read_scope("team") == {"tokens": (1_000, both)}
    assert run_usage(cp.syscall_log, cp.failures)["tokens"] == both  # the run's usage holds both too


async def test_with_in_doubt_fail_the_step_fails_and_the_model_is_not_called(tmp_path: Path) -> None:
    kernel, model, _ = await kernel_with_lost_call(tmp_path, "fail")
    with pytest.raises(InDoubtError, match="not made again"):
        await kernel.run(agent, pid="lost")
    assert model.calls == 0


@pytest.mark.parametrize("decision", ["approve", "reject"])
async def test_with_in_doubt_ask_a_human_decides_whether_the_call_is_made_again(tmp_path: Path, decision: str) -> None:
    kernel, model, reserve = await kernel_with_lost_call(tmp_path, "ask")
    cp = await kernel.run(agent, pid="lost")
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_reason == "in doubt: started and never finished"
    assert model.calls == 0
    if decision == "approve":
        await kernel.approve("lost")
        cp = await kernel.run(agent, pid="lost")
        assert cp.status == "COMPLETED" and model.calls == 1
        used = reserve["tokens"] + 5
    else:
        kernel.reject("lost", "too expensive")
        with pytest.raises(ModelCallError, match="rejected: too expensive"):
            await kernel.run(agent, pid="lost")
        assert model.calls == 0
        used = reserve["tokens"]  # the first call, which the provider may have billed
    assert await kernel.backend.budgets.read_scope("team") == {"tokens": (1_000, used)}


def test_an_unknown_policy_is_refused_in_code_and_in_the_config() -> None:
    from castor.settings import Settings

    with pytest.raises(ConfigError, match="retry, ask, fail"):
        Castor(llm_in_doubt="sometimes")
    with pytest.raises(ConfigError, match="in_doubt"):
        Settings(llm={"in_doubt": "sometimes"})
    assert Settings().llm.in_doubt == "retry" and Settings(llm={"in_doubt": "ask"}).llm.in_doubt == "ask"
