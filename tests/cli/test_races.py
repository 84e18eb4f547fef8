"""Several ``castor`` processes deciding and resuming one run at the same time (embedded mode: one SQLite
file, or one Redis prefix). Exactly one process executes the approved destructive call; the others take
its journaled result, and the run completes.

Each process is the real command line (``castor.cli.main``) in a Python process of its own. It imports
everything first, then waits on a file barrier, so all of them start deciding in the same moment. The
destructive tool appends one line per execution to a file and takes half a second, so the calls overlap.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.fleet  # starts CLI processes

TOOLS = '''
import os
import time
from pathlib import Path

LOG = Path(__file__).with_name("executions.log")


def wipe(path: str) -> str:
    with LOG.open("a") as log:
        log.write(f"{os.getpid()}\\n")
    if Path(__file__).with_name("crash").exists():
        os._exit(9)  # the process dies mid-call: the step is in doubt
    time.sleep(0.5)
    return f"wiped {path}"


def note(text: str) -> str:
    """A plain tool after the decided one: no claim of its own, so only one drive of the run may reach it."""
    with Path(__file__).with_name("notes.log").open("a") as notes:
        notes.write(f"{os.getpid()}\\n")
    time.sleep(0.2)
    return text
'''

AGENT = '''
from castor.lib import tool


async def cleanup():
    answer = await tool("wipe", path="/data")
    await tool("note", text=answer)
    return f"done: {answer}"
'''

RACER = '''
import sys
import time
from pathlib import Path

from castor.cli import main
import castor.cli._decide, castor.cli._runs, castor.kernel.facade  # noqa: F401  (imported before the barrier)

Path(sys.argv[1]).touch()
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
sys.exit(main(sys.argv[3:]))
'''


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("CASTOR_STORE", "CASTOR_REDIS_URL")}


def castor(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One ``castor`` command, to its end."""
    return subprocess.run(
        [sys.executable, "-m", "castor", *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=60
    )


def race(
    cwd: Path, commands: list[tuple[str, list[str]]], env: dict[str, str] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Start every command in a process of its own once its barrier file exists (``go``: when all are
    ready; ``executions.log``: once the tool started), wait for them all; ``env`` theirs (else ``_env()``)."""
    (cwd / "racer.py").write_text(RACER)
    go = cwd / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "racer.py", str(cwd / f"ready-{i}"), str(cwd / barrier), *command],
            cwd=cwd, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i, (barrier, command) in enumerate(commands)
    ]
    deadline = time.monotonic() + 30
    while not all((cwd / f"ready-{i}").exists() for i in range(len(commands))):
        assert time.monotonic() < deadline, "the racers never got ready"
        time.sleep(0.01)
    go.touch()
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def executions(cwd: Path, log_name: str = "executions.log") -> int:
    log = cwd / log_name
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """The ``--store`` option of every process: one SQLite file, or one Redis prefix."""
    if request.param == "sqlite":
        return ["--store", f"sqlite:///{tmp_path / 'castor.db'}"]
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    return ["--store", f"{url}?prefix={prefix}"]


def suspended_run(cwd: Path, store: list[str], tools: str = TOOLS) -> None:
    (cwd / "tools.py").write_text(textwrap.dedent(tools))
    (cwd / "agent.py").write_text(textwrap.dedent(AGENT))
    started = castor(
        cwd, *store, "run", "agent.py:cleanup", "--tool", "tools.py:wipe", "--destructive", "--tool", "tools.py:note",
        "--pid", "racy",
    )
    assert started.returncode == 0, started.stderr
    assert "SUSPENDED_FOR_HITL" in started.stdout


# Each process with its barrier: all released together ("go"), or once the approved call started running.
SCENARIOS = {
    "approve+resume": [("go", "approve"), ("go", "resume")],
    "approve+approve": [("go", "approve"), ("go", "approve")],
    "approve+resume+resume": [("go", "approve"), ("go", "resume"), ("go", "resume")],
    "resumes-mid-call": [("go", "approve"), ("executions.log", "resume"), ("executions.log", "resume")],
}


@pytest.mark.parametrize(
    ("store", "scenario"),
    [("sqlite", "approve+resume"), ("sqlite", "approve+approve"), ("sqlite", "resumes-mid-call"),
     ("redis", "approve+resume+resume"), ("redis", "resumes-mid-call")],
    indirect=["store"],
)
def test_an_approved_call_runs_once_whoever_races_to_run_it(tmp_path: Path, store: list[str], scenario: str) -> None:
    suspended_run(tmp_path, store)
    results = race(tmp_path, [(barrier, [*store, verb, "racy"]) for barrier, verb in SCENARIOS[scenario]])
    outputs = "\n".join(f"$ {' '.join(r.args[5:])} -> {r.returncode}\n{r.stdout}{r.stderr}" for r in results)
    assert executions(tmp_path) == 1, outputs
    # The steps after the decided one run in one drive of the run: a second process waits for it, then
    # replays what it journaled.
    assert executions(tmp_path, "notes.log") == 1, outputs
    for result in results:  # every process ended well, or was told the call was decided already
        assert result.returncode == 0 or "decided already" in result.stderr, outputs
        assert "journaled already" not in result.stdout + result.stderr, outputs
    shown = castor(tmp_path, *store, "inspect", "racy")
    assert re.search(r"(?i)^status:\s+COMPLETED$", shown.stdout, re.M), shown.stdout + outputs
    assert "done: wiped /data" in shown.stdout


@pytest.mark.parametrize("store", ["sqlite", "redis"], indirect=True)
def test_a_claim_whose_process_died_mid_call_goes_back_to_a_human(tmp_path: Path, store: list[str]) -> None:
    """The approving process dies inside the tool, its claim held: the next process to reach the step
    does not wait forever, nor run it again blindly; the step is in doubt and a human decides, once."""
    suspended_run(tmp_path, store)
    (tmp_path / "crash").touch()
    crashed = castor(tmp_path, *store, "approve", "racy")
    assert crashed.returncode == 9 and executions(tmp_path) == 1, crashed.stderr
    (tmp_path / "crash").unlink()
    resumed = castor(tmp_path, *store, "resume", "racy")
    assert resumed.returncode == 0, resumed.stderr
    assert "SUSPENDED_FOR_HITL" in resumed.stdout and executions(tmp_path) == 1, resumed.stdout
    shown = castor(tmp_path, *store, "inspect", "racy")
    assert "in doubt: started and never finished" in shown.stdout, shown.stdout
    approved = castor(tmp_path, *store, "approve", "racy")
    assert approved.returncode == 0, approved.stderr
    assert "COMPLETED" in approved.stdout and executions(tmp_path) == 2, approved.stdout


def test_an_idempotent_call_whose_process_died_runs_again(tmp_path: Path) -> None:
    """As the fleet does for a lost worker: an idempotent tool is run again, without asking anyone."""
    store = ["--store", f"sqlite:///{tmp_path / 'castor.db'}"]
    marked = TOOLS.replace("def wipe(", "@castor_tool(idempotent=True)\ndef wipe(")
    idempotent = "from castor import castor_tool\n" + marked
    suspended_run(tmp_path, store, idempotent)
    (tmp_path / "crash").touch()
    assert castor(tmp_path, *store, "approve", "racy").returncode == 9
    (tmp_path / "crash").unlink()
    resumed = castor(tmp_path, *store, "resume", "racy")
    assert resumed.returncode == 0, resumed.stderr
    assert "COMPLETED" in resumed.stdout and executions(tmp_path) == 2, resumed.stdout


@pytest.mark.parametrize("store", ["sqlite", "redis"], indirect=True)
def test_two_humans_deciding_at_once_get_one_decision(tmp_path: Path, store: list[str]) -> None:
    """``castor approve`` and ``castor reject`` of the same call at the same moment: one decision stands;
    the tool runs if and only if it is the approval, and the other human is told the call was decided."""
    suspended_run(tmp_path, store)
    approve, reject = race(tmp_path, [("go", [*store, "approve", "racy"]),
                                      ("go", [*store, "reject", "racy", "--reason", "no"])])
    outputs = "\n".join(f"$ {' '.join(r.args[5:])} -> {r.returncode}\n{r.stdout}{r.stderr}" for r in (approve, reject))
    ran = executions(tmp_path)
    assert ran <= 1, outputs
    winner, loser = (approve, reject) if ran == 1 else (reject, approve)
    assert winner.returncode == 0, outputs
    # Told so: decided already, or (the winner's drive finished first) nothing pending any more.
    assert loser.returncode != 0 and re.search(r"decided already|no pending call", loser.stderr), outputs
    shown = castor(tmp_path, *store, "inspect", "racy")
    assert re.search(r"(?i)^status:\s+COMPLETED$", shown.stdout, re.M), shown.stdout + outputs
    assert ("done: wiped /data" in shown.stdout) == (ran == 1), shown.stdout + outputs
    assert executions(tmp_path) == ran and executions(tmp_path, "notes.log") <= 1, outputs  # one drive after it


GRAPH_AGENT = '''
import os
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool as lc_tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.prebuilt import create_react_agent

from castor.frameworks.langchain import guard
from tools import look, wipe

CALLS = Path(__file__).with_name("model.log")


class Scripted(BaseChatModel):
    """Two looks, then the wipe, then the answer: the n-th answer for a conversation holding n."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools])

    def _generate(self, messages: Any, *args: Any, **kwargs: Any) -> ChatResult:
        with CALLS.open("a") as log:
            log.write(f"{os.getpid()}\\n")
        n = sum(isinstance(m, AIMessage) for m in messages)
        if n < 2:
            answer = AIMessage(content="", tool_calls=[{"name": "look", "args": {"where": f"dir{n}"}, "id": f"l{n}"}])
        elif n == 2:
            answer = AIMessage(content="", tool_calls=[{"name": "wipe", "args": {"path": "/data"}, "id": "w"}])
        else:
            answer = AIMessage(content="all clean")
        return ChatResult(generations=[ChatGeneration(message=answer)])


async def cleanup():
    graph = guard(create_react_agent(Scripted(), [lc_tool(look), lc_tool(wipe)]))
    state = await graph.ainvoke({"messages": [("user", "clean up")]})
    return state["messages"][-1].content
'''


def suspended_graph_run(cwd: Path, store: list[str]) -> None:
    """A LangGraph agent's run, suspended at its destructive call after three model steps."""
    pytest.importorskip("langgraph")
    tools = TOOLS + '\n\ndef look(where: str) -> str:\n    """Look somewhere."""\n    return f"old files in {where}"\n'
    tools = tools.replace("def wipe(path: str) -> str:\n", 'def wipe(path: str) -> str:\n    """Wipe a path."""\n')
    (cwd / "tools.py").write_text(textwrap.dedent(tools))
    (cwd / "agent.py").write_text(textwrap.dedent(GRAPH_AGENT))
    started = castor(cwd, *store, "run", "agent.py:cleanup", "--tool", "tools.py:look", "--tool",
                     "tools.py:wipe", "--destructive", "wipe", "--pid", "racy")
    assert started.returncode == 0 and "SUSPENDED_FOR_HITL" in started.stdout, started.stdout + started.stderr
    assert executions(cwd, "model.log") == 3  # two looks, then the wipe asked for


@pytest.mark.parametrize("store", ["sqlite", "redis"], indirect=True)
def test_a_langgraph_run_raced_by_three_processes_runs_its_call_once_and_asks_each_step_once(
    tmp_path: Path, store: list[str]
) -> None:
    """Each racer replays the graph from its last journaled model step (castor.frameworks._langchain_resume):
    the approved call still runs once, and the model is asked once per model step over the run's life."""
    suspended_graph_run(tmp_path, store)
    results = race(tmp_path, [("go", [*store, "approve", "racy"]), ("go", [*store, "resume", "racy"]),
                              ("go", [*store, "resume", "racy"])])
    outputs = "\n".join(f"$ {' '.join(r.args[5:])} -> {r.returncode}\n{r.stdout}{r.stderr}" for r in results)
    assert executions(tmp_path) == 1, outputs
    assert executions(tmp_path, "model.log") == 4, outputs  # the answer after the wipe, asked by one drive
    for result in results:
        assert result.returncode == 0 or "decided already" in result.stderr, outputs
    shown = castor(tmp_path, *store, "inspect", "racy")
    assert re.search(r"(?i)^status:\s+COMPLETED$", shown.stdout, re.M) and "all clean" in shown.stdout, shown.stdout


def test_a_langgraph_run_whose_process_died_mid_call_goes_back_to_a_human(tmp_path: Path) -> None:
    """The approving process dies inside the destructive call of a graph that started late: the resume
    starts late too, finds the step in doubt and asks a human; the model is not asked again meanwhile."""
    store = ["--store", f"sqlite:///{tmp_path / 'castor.db'}"]
    suspended_graph_run(tmp_path, store)
    (tmp_path / "crash").touch()
    assert castor(tmp_path, *store, "approve", "racy").returncode == 9 and executions(tmp_path) == 1
    (tmp_path / "crash").unlink()
    resumed = castor(tmp_path, *store, "resume", "racy")
    assert resumed.returncode == 0 and "SUSPENDED_FOR_HITL" in resumed.stdout, resumed.stdout + resumed.stderr
    assert executions(tmp_path) == 1 and executions(tmp_path, "model.log") == 3
    approved = castor(tmp_path, *store, "approve", "racy")
    assert approved.returncode == 0 and "COMPLETED" in approved.stdout, approved.stdout + approved.stderr
    assert executions(tmp_path) == 2 and executions(tmp_path, "model.log") == 4


@pytest.mark.parametrize("barrier", ["go", "executions.log"], ids=["together", "mid-call"])
def test_a_cancel_racing_an_approval_never_runs_the_call_twice_nor_after_it_was_cancelled(
    tmp_path: Path, barrier: str
) -> None:
    """``castor cancel --db`` of a local run holds the run's drive while it writes: against an approval at
    the same moment, or while the approved call runs, either the cancel is refused (a live process drives
    the run) or it lands first and the approval finds nothing waiting. The call runs at most once, and
    never after the run was cancelled."""
    store = ["--store", f"sqlite:///{tmp_path / 'castor.db'}"]
    suspended_run(tmp_path, store)
    approve, cancel = race(tmp_path, [("go", [*store, "approve", "racy"]), (barrier, [*store, "cancel", "racy"])])
    outputs = "\n".join(f"$ {' '.join(r.args[5:])} -> {r.returncode}\n{r.stdout}{r.stderr}" for r in (approve, cancel))
    for result in (approve, cancel):
        assert "Traceback" not in result.stderr, outputs
    shown = castor(tmp_path, *store, "inspect", "racy").stdout
    if cancel.returncode == 0 and "racy: cancelled" in cancel.stdout:
        assert re.search(r"(?i)^status:\s+PREEMPTED$", shown, re.M), shown + outputs
        assert executions(tmp_path) <= 1 and executions(tmp_path, "notes.log") == 0, outputs
        if executions(tmp_path) == 0:  # cancelled before the approval ran it: nothing may run it now
            assert approve.returncode != 0, outputs
    else:
        assert "is being driven by" in cancel.stderr or "ended" in cancel.stderr, outputs
        assert executions(tmp_path) == 1 and re.search(r"(?i)^status:\s+COMPLETED$", shown, re.M), shown + outputs
