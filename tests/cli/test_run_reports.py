"""What ``castor run`` says about how a run went: how many calls the budget refused (the agent may carry on
and complete), and nothing about a status it never reached when the store is away."""

from __future__ import annotations

import socket

from .conftest import RUN, Cli

TOOLS = ("--tool", "tools.py:search", "--tool", "tools.py:delete_file")


def test_run_says_how_many_calls_the_budget_refused(cli: Cli) -> None:
    # api=1 pays for the search; both deletes are refused, and the agent completes all the same
    done = cli("run", "agents.py:cleanup", *TOOLS, "--budget", "api=1", "--hitl", "approve-all")
    assert done.code == 0 and "Status: COMPLETED" in done.out
    line = f"Refused: 2 calls by the budget (INSUFFICIENT_CAPABILITY; castor inspect {done.pid} lists them)"
    assert line in done.out.splitlines()
    enough = cli("run", "agents.py:cleanup", *TOOLS, "--budget", "api=3", "--hitl", "approve-all")
    assert "Refused:" not in enough.out


def test_run_prints_no_status_before_a_store_error(cli: Cli) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    failed = cli(*RUN, "--store", f"redis://127.0.0.1:{port}/0")
    assert failed.code == 1
    assert failed.out == ""  # no "Status: RUNNING" for a run that was never stored
    assert failed.err.startswith(f"castor: error: Redis at redis://127.0.0.1:{port}/0 is unavailable")
    assert failed.err.count("\n") == 1
