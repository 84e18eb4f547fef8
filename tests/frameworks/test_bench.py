"""``bench/frameworks.py`` still measures what its table says: every installed framework's case runs alone,
guarded and replayed from a fork at its last step (a short run, one repetition; the figures are not
checked, only that each row is measured)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "frameworks.py"
CASES = ["langgraph", "langgraph-once", "pydantic-ai", "openai-agents", "smolagents", "smolagents-once"]


@pytest.mark.parametrize("case", CASES)
def test_a_case_is_measured(case: str) -> None:
    env = dict(os.environ, OPENAI_API_KEY="sk-offline")
    done = subprocess.run([sys.executable, str(BENCH), "--steps", "3", "--repeat", "1", "--only", case],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith(case + " ")]
    assert len(rows) == 1, done.stdout
    row = rows[0]
    assert row[0] == case and row[-1].endswith("%"), row  # alone, layers, embedded, added, replayed, replay/live
    assert len([cell for cell in row if cell.endswith("µs")]) == 5, row


@pytest.mark.parametrize("case", ["openai-agents", "smolagents"])
def test_a_case_is_measured_against_a_model_that_waits(case: str) -> None:
    """``--latency``: the scripted model waits, and the row gains the wall-clock line of the replay goal."""
    env = dict(os.environ, OPENAI_API_KEY="sk-offline")
    done = subprocess.run([sys.executable, str(BENCH), "--steps", "2", "--repeat", "1", "--only", case,
                           "--latency", "0.01"], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no --latency" not in done.stdout, done.stdout
    wall = [line for line in done.stdout.splitlines() if line.strip().startswith("wall clock: live ")]
    assert len(wall) == 1, done.stdout
    live_ms = float(wall[0].split("live ")[1].split(" ms")[0])
    assert live_ms >= 10, wall  # each step waited for the model's 10 ms
