"""The installed ``castor`` console script across processes, ``castor demo``, and the examples.

One process per scenario: a run suspends in one ``castor`` process; ``ps``, ``inspect`` and ``approve``
in others see it and finish it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from castor.cli import main

from .conftest import RUN, Cli, calls

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = shutil.which("castor", path=str(Path(sys.executable).parent)) or "castor"
pytestmark = pytest.mark.fleet  # console scripts in processes of their own


def castor(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CASTOR_STORE", "CASTOR_REDIS_URL")}
    return subprocess.run([SCRIPT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def pid_of(out: str) -> str:
    return next(line.split()[1] for line in out.splitlines() if line.startswith("PID:"))


def test_a_run_suspended_in_one_process_is_seen_and_finished_by_others(workdir: Path) -> None:
    started = castor(*RUN, "--budget", "api=5", cwd=workdir)
    assert started.returncode == 0, started.stderr
    pid = pid_of(started.stdout)
    assert "Status: SUSPENDED_FOR_HITL" in started.stdout

    listed = castor("ps", cwd=workdir)
    assert listed.stdout.strip() == f"[HITL] {pid}  cleanup  1 step  (pending: delete_file)"
    shown = castor("inspect", pid, cwd=workdir)
    assert "--- Pending HITL ---\nStep: 1\nTool: delete_file" in shown.stdout
    assert "  api: 4 / 5 remaining" in shown.stdout

    first = castor("approve", pid, cwd=workdir)
    assert first.returncode == 0 and "Pending: step 2: delete_file" in first.stdout
    second = castor("approve", pid, "--as", "ops", cwd=workdir)
    assert second.returncode == 0, second.stderr
    assert "Status: COMPLETED" in second.stdout
    assert "Result: Cleaned up: Deleted /tmp/old1, Deleted /tmp/old2" in second.stdout
    assert calls(workdir) == ["search", "delete_file", "delete_file"]  # each tool ran once, across processes
    assert castor("ps", "--status", "done", cwd=workdir).stdout.startswith(f"[DONE] {pid}")

    missing = castor("approve", pid, cwd=workdir)
    assert missing.returncode == 1 and missing.stderr.startswith("castor: error: ") and "no pending" in missing.stderr
    usage = castor("fork", pid, cwd=workdir)
    assert usage.returncode == 2


def test_the_readme_walk_through(workdir: Path) -> None:
    started = castor(
        "run", str(ROOT / "examples/agent.py:cleanup"), "--tool", str(ROOT / "examples/tools.py:search"),
        "--tool", str(ROOT / "examples/tools.py:delete_file"), "--destructive", "--budget", "api=50", cwd=workdir,
    )
    assert started.returncode == 0, started.stderr
    pid = pid_of(started.stdout)
    rejected = castor("reject", pid, "--reason", "keep it", cwd=workdir)
    assert rejected.stdout.startswith(f"Rejected: {pid}\n")
    modified = castor("modify", pid, "--feedback", "archive instead", cwd=workdir)
    assert modified.stdout.startswith(f"Modified: {pid}\n") and "Result: Cleaned up" in modified.stdout
    forked = castor("fork", pid, "--at-step", "1", cwd=workdir)
    assert "Replayed from cache: 1 step " in forked.stdout and "Status: SUSPENDED_FOR_HITL" in forked.stdout


def test_demo_in_process_is_deterministic_and_leaves_no_castor_db(cli: Cli, workdir: Path) -> None:
    first = cli("demo")
    assert first.code == 0, first.err
    assert first.err == ""
    out = first.out
    for heading in ("Level 1: a human approves", "Level 2: speculative", "Level 3: time travel"):
        assert heading in out
    level1, rest = out.split("Level 2: speculative")
    level2, level3 = rest.split("Level 3: time travel")
    assert "$ castor approve level1 --as alice\nApproved: level1" in level1
    assert "Rejected: level1" in level1 and "Modified: level1" in level1
    assert "Only the approved call touched anything: search ran 1x, delete_file ran 1x." in level1
    assert "  Flagged:        3" in level2 and "Human-decided: 3 (step 1, step 2, step 3), Flagged: 0." in level2
    assert "Replayed from cache: 2 steps" in level3 and "Executed:            2 tool calls" in level3
    assert "the tools counted it: search ran 0x, delete_file ran 2x." in level3
    level3, models = level3.split("Model calls: a syscall each")
    assert "The model was called 2x." in models and "[1] model demo-model: user:" in models
    assert "calls delete_file" in models and "1 new model call" in models
    usage = re.search(r"Its usage is (\d+) tokens: the shared model step's (\d+), .*\n.*plus (\d+) for its own", models)
    assert usage is not None, models
    total, shared, own = (int(n) for n in usage.groups())
    assert total == shared + own and shared > 0 and own > 0
    assert not (workdir / "castor.db").exists()
    assert "CASTOR_STORE" not in os.environ
    assert cli("demo").out == out  # same every time


def test_castor_demo_console_script(workdir: Path) -> None:
    shown = castor("demo", cwd=workdir)
    assert shown.returncode == 0, shown.stderr
    assert "Replayed from cache: 2 steps" in shown.stdout and not (workdir / "castor.db").exists()
    named = castor("demo", "--db", "mine.db", cwd=workdir)  # it took and ignored it
    assert named.returncode == 0 and not (workdir / "mine.db").exists()
    assert named.stderr == "castor: warning: the demo runs on a temporary store of its own; --db not used\n"


def test_quickstart_prints_the_two_lines(workdir: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples/quickstart.py")], cwd=workdir, capture_output=True, text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Cleaned up\n3 steps, 2 need review\n"


def test_security_levels_example_runs(workdir: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples/security_levels.py")], cwd=workdir, capture_output=True, text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "tool executions: {'search': 1, 'delete_file': 1} (only the approved delete ran)" in done.stdout
    assert "4 steps, 1 auto-verified, 3 flagged" in done.stdout
    assert "tool executions: {'delete_file': 2} (steps 0-1 came from the journal" in done.stdout


def test_main_reads_sys_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["castor", "ps"])
    assert main() == 0


async def test_a_reader_that_stops_early_is_no_error(tmp_path: Path) -> None:
    """``castor ps | head -1``: the reader closes the pipe with output still to come; ``castor`` exits 0 and
    says nothing (it said ``castor: error: [Errno 32] Broken pipe`` and exited 1)."""
    from castor import Castor
    from castor.lib import tool

    async def noop() -> None:
        return None

    async def agent() -> None:
        await tool("noop")

    kernel = Castor(tools=[noop], store=f"sqlite:///{tmp_path / 'many.db'}")
    try:
        for n in range(400):  # 400 lines of some 200 characters: more than a pipe's buffer
            await kernel.run(agent, pid=f"{'p' * 180}-{n}")
    finally:
        await kernel.close()
    env = {k: v for k, v in os.environ.items() if k not in ("CASTOR_STORE", "CASTOR_REDIS_URL")}
    reader = subprocess.Popen([SCRIPT, "ps", "--db", str(tmp_path / "many.db")], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert reader.stdout is not None and reader.stderr is not None
    assert reader.stdout.readline().startswith(b"[DONE] ppp")
    reader.stdout.close()
    with reader.stderr:
        assert reader.wait(60) == 0
        assert reader.stderr.read() == b""


def test_a_failed_run_is_reported_once_on_stderr(tmp_path: Path) -> None:
    """The run's end was logged by the kernel (Python's last-resort handler printed it) before the CLI said
    the same as its error: "run ... failed after 1 steps: UnknownToolError ...", then "castor: error: ..."."""
    done = castor("run", str(ROOT / "examples/agent.py:cleanup"), "--tool", str(ROOT / "examples/tools.py:search"),
                  cwd=tmp_path)
    assert done.returncode == 1
    assert "Status: FAILED" in done.stdout
    assert done.stderr.startswith("castor: error: the agent called unknown tool 'delete_file'"), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
