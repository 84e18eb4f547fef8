"""Progress for long work: ``castor run``/``resume`` show a live step counter (``--progress``, or on a
terminal), and ``ps`` / ``budget show`` take ``--watch``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .conftest import Cli

SLOW = '''
import asyncio

from castor.lib import tool


async def nap(n: int) -> int:
    await asyncio.sleep(0.7)
    return n


async def sleepy():
    for n in range(4):
        await tool("nap", n=n)
    return "rested"
'''


def test_run_shows_a_live_step_counter_with_progress(cli: Cli, workdir: Path) -> None:
    (workdir / "slow.py").write_text(textwrap.dedent(SLOW))
    done = cli("run", "slow.py:sleepy", "--tool", "slow.py:nap", "--progress")
    assert done.code == 0 and "Status: COMPLETED" in done.out
    counts = [int(line.split(": ")[2].split()[0]) for line in done.err.splitlines() if line.startswith("progress: ")]
    assert len(counts) >= 3 and counts == sorted(counts) and counts[0] < counts[-1], done.err
    assert all(line.startswith(f"progress: {done.pid}: ") for line in done.err.splitlines())
    quiet = cli("run", "slow.py:sleepy", "--tool", "slow.py:nap")  # not a terminal, not asked: nothing
    assert quiet.code == 0 and "progress" not in quiet.err
    resumed = cli("resume", done.pid, "--progress")  # completed already: nothing to count
    assert resumed.code == 0


def _frames(proc: subprocess.Popen[str], count: int, timeout: float = 20) -> list[str]:
    """The next ``count`` frames a ``--watch`` process printed (each opens with a ``--- time ---`` line)."""
    assert proc.stdout is not None
    frames: list[str] = []
    current: list[str] = []
    deadline = time.monotonic() + timeout
    while len(frames) < count and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("--- "):
            if current:
                frames.append("".join(current))
            current = []
        else:
            current.append(line)
    return frames


@pytest.mark.fleet
@pytest.mark.parametrize("command", [["ps"], ["budget", "show", "team"]])
def test_watch_prints_again_until_ctrl_c(cli: Cli, workdir: Path, command: list[str]) -> None:
    assert cli("budget", "set", "team", "api=10").code == 0
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with subprocess.Popen([sys.executable, "-m", "castor", *command, "--watch", "0.2"], cwd=workdir, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            first = _frames(proc, 2)
            assert len(first) == 2 and first[0] == first[1]
            # the store changes: a later frame shows it
            assert cli("run", "agents.py:cleanup", "--tool", "tools.py:search", "--tool", "tools.py:delete_file",
                       "--budget", "api=5", "--scope", "team", "--hitl", "approve-all").code == 0
            later = _frames(proc, 6)
            assert later[-1] != first[0], later
            assert ("[DONE] cleanup-" in later[-1]) if command == ["ps"] else ("api: 3 used / 10 limit" in later[-1])
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
