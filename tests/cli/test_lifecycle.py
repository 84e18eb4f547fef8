"""A run's life through the CLI: run, ps, inspect, approve, reject, modify, resume, the approval modes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from .conftest import RUN, Cli, calls


def test_run_suspends_then_approve_and_reject_finish_it(cli: Cli, workdir: Path) -> None:
    started = cli(*RUN, "--budget", "api=50")
    assert started.code == 0, started.err
    pid = started.pid
    assert pid.startswith("cleanup-") and len(pid) == len("cleanup-") + 8
    assert "Status: SUSPENDED_FOR_HITL" in started.out
    assert 'Pending: step 1: delete_file(path="/tmp/old1")' in started.out
    assert f"  castor approve {pid}\n" in started.out
    assert f'  castor reject {pid} --reason "..."' in started.out
    assert calls(workdir) == ["search"]
    assert (workdir / "castor.db").exists()  # the default store: ./castor.db

    listed = cli("ps")
    assert listed.out.splitlines() == [f"[HITL] {pid}  cleanup  1 step  (pending: delete_file)"]

    approved = cli("approve", pid, "--as", "alice")
    assert approved.code == 0, approved.err
    assert approved.out.startswith(f"Approved: {pid}\nStep 1: delete_file(path=\"/tmp/old1\") -> Deleted /tmp/old1\n")
    assert "Status: SUSPENDED_FOR_HITL" in approved.out and "step 2: delete_file" in approved.out
    assert calls(workdir) == ["search", "delete_file"]  # step 0 replayed, not executed again

    rejected = cli("reject", pid, "--reason", "still in use")
    assert rejected.code == 0, rejected.err
    assert rejected.out.startswith(f"Rejected: {pid}\n")
    assert "Status: COMPLETED" in rejected.out
    assert "Result: Cleaned up: Deleted /tmp/old1, HITL_REJECTED" in rejected.out
    assert "  Human-decided:  2\n" in rejected.out and "  Flagged:        0\n" in rejected.out
    assert calls(workdir) == ["search", "delete_file"]

    assert cli("ps").out.strip() == f"[DONE] {pid}  cleanup  3 steps"


def test_modify_answers_the_call_with_feedback(cli: Cli, workdir: Path) -> None:
    pid = cli(*RUN, "--pid", "job-1").pid
    assert pid == "job-1"
    modified = cli("modify", pid, "--feedback", "archive it instead", "--as", "bob")
    assert modified.code == 0 and modified.out.startswith("Modified: job-1\n")
    assert '{"status": "HITL_MODIFIED", "human_feedback": "archive it instead"}' in modified.out
    shown = cli("inspect", "job-1", "--json")
    data = json.loads(shown.out)
    record = data["syscall_log"][1]
    assert record["was_hitl"] and record["decided_by"] == "bob"
    assert record["response"] == {"status": "HITL_MODIFIED", "human_feedback": "archive it instead"}
    assert calls(workdir) == ["search"]


def test_inspect_shows_budgets_steps_flags_and_the_pending_call(cli: Cli) -> None:
    pid = cli(*RUN, "--budget", "api=10").pid
    cli("approve", pid, "--as", "alice")
    shown = cli("inspect", pid)
    assert shown.code == 0
    lines = shown.out.splitlines()
    assert lines[:3] == [f"PID:    {pid}", "Status: SUSPENDED_FOR_HITL", "Agent:  cleanup"]
    assert "Capabilities:" in lines and "  api: 8 / 10 remaining" in lines
    assert "Syscall log: 2 entries" in lines
    assert any(line.startswith("  [0] search(") and "charged api=1" in line for line in lines)
    assert any("human: approved by alice" in line and "charged api=1" in line for line in lines)
    block = shown.out.split("--- Pending HITL ---\n", 1)[1]
    assert block.startswith('Step: 2\nTool: delete_file\nArguments: {\n  "path": "/tmp/old2"\n}')
    assert "Spec:   " in shown.out and "tools.py:delete_file" in shown.out


def test_speculative_run_prints_the_execution_summary(cli: Cli, workdir: Path) -> None:
    done = cli(*RUN, "--speculative")
    assert done.code == 0
    lines = done.out.splitlines()
    assert "Status: COMPLETED" in lines
    assert "Result: Cleaned up: Deleted /tmp/old1, Deleted /tmp/old2" in lines
    start = lines.index("Execution Summary:")
    assert lines[start + 1 : start + 5] == [
        "  Total steps:    3", "  Auto-verified:  1", "  Human-decided:  0", "  Flagged:        2",
    ]
    assert lines[start + 5].startswith("    Step 1: delete_file — destructive tool executed speculatively")
    assert lines[start + 6].startswith("    Step 2: delete_file — ")
    assert calls(workdir) == ["search", "delete_file", "delete_file"]
    shown = cli("inspect", done.pid).out
    assert shown.count("needs_review: destructive tool executed speculatively") == 2


@pytest.mark.parametrize("mode", ["approve-all", "auto"])
def test_hitl_approve_all(cli: Cli, workdir: Path, mode: str) -> None:
    done = cli(*RUN, "--hitl", mode)
    assert done.code == 0 and "Status: COMPLETED" in done.out
    assert f"({mode}) approve step 1: delete_file" in done.out
    assert calls(workdir) == ["search", "delete_file", "delete_file"]
    assert "Decided step 2: delete_file — approved by approve-all" in done.out


CUT_OFF = """
import time
from pathlib import Path

from castor import castor_tool
from castor.lib import tool

LOG = Path(__file__).with_name("calls.log")


@castor_tool(destructive=True, timeout_seconds=0.05)
def wipe(path: str) -> str:
    with LOG.open("a") as log:
        log.write("wipe\\n")
    time.sleep(0.3)  # past its deadline: cut off, the step is in doubt
    return f"wiped {path}"


async def wipes():
    return await tool("wipe", path="/data")
"""


def test_hitl_approve_all_leaves_a_step_in_doubt_to_a_human(cli: Cli, workdir: Path) -> None:
    """approve-all approves destructive calls; a call that started and was lost may have acted, and
    approving it would run it again: the run stays suspended for a human, who is told why."""
    (workdir / "cut.py").write_text(CUT_OFF)
    first = cli("run", "cut.py:wipes", "--tool", "cut.py:wipe", "--hitl", "approve-all")
    assert first.code == 1 and "timed out after 0.05s" in first.err, first.err  # approved, then cut off
    pid = first.pid
    again = cli("resume", pid, "--hitl", "approve-all")
    assert again.code == 0, again.err
    assert "Status: SUSPENDED_FOR_HITL" in again.out and f"castor approve {pid}" in again.out
    assert f"castor: (approve-all) run {pid} waits at step 0 on 'wipe', in doubt" in again.err
    assert calls(workdir) == ["wipe"]  # not run a second time
    rejected = cli("resume", pid, "--hitl", "reject-all")
    assert "Status: COMPLETED" in rejected.out and calls(workdir) == ["wipe"]


def test_hitl_reject_all(cli: Cli, workdir: Path) -> None:
    done = cli(*RUN, "--hitl", "reject-all")
    assert "Result: Cleaned up: HITL_REJECTED, HITL_REJECTED" in done.out
    assert calls(workdir) == ["search"]


def test_hitl_interactive_reads_the_terminal(cli: Cli, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a\nr\nnot needed\n"))
    done = cli(*RUN, "--hitl", "interactive")
    assert done.code == 0, done.err
    assert "[a]pprove / [r]eject / [m]odify?" in done.out
    assert "Result: Cleaned up: Deleted /tmp/old1, HITL_REJECTED" in done.out
    assert calls(workdir) == ["search", "delete_file"]


def test_resume_continues_after_a_decision_and_reports_a_finished_run(cli: Cli) -> None:
    pid = cli(*RUN).pid
    again = cli("resume", pid)  # nothing decided: it stops at the same call
    assert again.code == 0 and 'Pending: step 1: delete_file(path="/tmp/old1")' in again.out
    finished = cli("resume", pid, "--hitl", "approve-all")
    assert "Status: COMPLETED" in finished.out
    over = cli("resume", pid)
    assert over.code == 0 and f"Run {pid} completed already" in over.out


def test_ps_filters_and_json(cli: Cli) -> None:
    assert cli("ps").out == "No agents found.\n"
    waiting = cli(*RUN).pid
    done = cli(*RUN, "--speculative").pid
    assert cli("ps", "--status", "hitl").out.split()[1] == waiting
    assert cli("ps", "--status", "COMPLETED").out.split()[:2] == ["[DONE]", done]
    rows = json.loads(cli("ps", "--json").out)
    assert {row["pid"]: row["status"] for row in rows} == {waiting: "SUSPENDED_FOR_HITL", done: "COMPLETED"}
    assert next(r for r in rows if r["pid"] == waiting)["pending_tool"] == "delete_file"
    assert cli("ps", "--status", "nonsense").code == 2


def test_budget_limits_plain_tools_and_warns_about_unused_keys(cli: Cli, workdir: Path) -> None:
    done = cli(*RUN, "--budget", "api=2", "--budget", "gpu=3", "--hitl", "approve-all")
    assert done.code == 0
    assert "castor: warning: budget 'gpu' limits nothing" in done.err
    assert "INSUFFICIENT_CAPABILITY" in cli("inspect", done.pid).out
    assert calls(workdir) == ["search", "delete_file"]  # the third call was denied, never asked about


KIDS = '''
from castor import castor_agent
from castor.lib import join, spawn, tool


@castor_agent(name="cli_test_deleter")
async def deleter():
    return await tool("delete_file", path="/tmp/child")


async def parent():
    await tool("search", query="q")
    return "parent got " + str(await join(await spawn("cli_test_deleter", capabilities={"api": 3})))
'''


def test_a_child_agents_call_is_decided_through_the_parent_or_its_own_pid(cli: Cli, workdir: Path) -> None:
    (workdir / "kids.py").write_text(KIDS)
    tools = ("--tool", "tools.py:search", "--tool", "tools.py:delete_file", "--destructive", "--budget", "api=10")
    first = cli("run", "kids.py:parent", *tools, "--pid", "p1")
    assert 'Pending: delete_file(path="/tmp/child")' in first.out
    assert "[HITL] p1::cli_test_deleter-0  cli_test_deleter  0 steps  (parent: p1)" in cli("ps").out
    approved = cli("approve", "p1")
    assert approved.code == 0 and "Result: parent got Deleted /tmp/child" in approved.out

    cli("run", "kids.py:parent", *tools, "--pid", "p2")
    rejected = cli("reject", "p2::cli_test_deleter-0", "--reason", "no")  # the child's pid: resumed via p2
    assert rejected.code == 0 and rejected.out.startswith("Rejected: p2\n")
    assert "Status: COMPLETED" in rejected.out and "HITL_REJECTED" in rejected.out
    assert calls(workdir) == ["search", "delete_file", "search"]


def test_cancelling_a_parent_drops_its_child_agents_waiting_call(cli: Cli, workdir: Path) -> None:
    """The call waits in a child agent: the parent's cancel drops it (``castor approvals`` listed it on), and
    neither pid can approve it any more."""
    (workdir / "kids.py").write_text(KIDS)
    tools = ("--tool", "tools.py:search", "--tool", "tools.py:delete_file", "--destructive", "--budget", "api=10")
    cli("run", "kids.py:parent", *tools, "--pid", "p3")
    assert "p3::cli_test_deleter-0" in cli("approvals", "--db", "castor.db").out
    assert cli("cancel", "p3", "--db", "castor.db", "--as", "ann").out == "p3: cancelled\n"
    assert "p3" not in cli("approvals", "--db", "castor.db").out
    for pid in ("p3", "p3::cli_test_deleter-0"):
        refused = cli("approve", pid)
        assert refused.code == 1 and "cancelled by ann" in refused.err, refused.err
    assert calls(workdir) == ["search"]
    # The child's own row no longer says it waits for a human: it is stopped with its parent.
    listed = cli("ps").out
    assert "[HITL]" not in listed, listed
    assert "p3::cli_test_deleter-0  cli_test_deleter  0 steps  (parent: p3)" in listed, listed
    shown = cli("inspect", "p3::cli_test_deleter-0").out
    assert "Status: PREEMPTED" in shown and "Preempted: cancelled" in shown, shown
    assert "Spec:   none (a child agent: its parent p3 drives it)" in shown, shown
    child = cli("resume", "p3::cli_test_deleter-0")  # its parent drives it
    assert child.code == 1 and child.err == ("castor: error: run 'p3::cli_test_deleter-0' is a child agent of run "
                                             "'p3', which drives it: resume it with castor resume p3\n"), child.err
    # A cancel is resumable: the parent's resume asks for the child's call again, and it runs once approved.
    resumed = cli("resume", "p3")
    assert 'Pending: delete_file(path="/tmp/child")' in resumed.out, resumed.out
    assert "[HITL] p3::cli_test_deleter-0" in cli("ps").out
    approved = cli("approve", "p3")
    assert approved.code == 0 and "Result: parent got Deleted /tmp/child" in approved.out, approved.out
    assert calls(workdir) == ["search", "delete_file"]


def test_interactive_without_an_answer_leaves_the_run_suspended(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    result = cli(*RUN, "--hitl", "interactive")
    assert result.code == 1 and "no answer on standard input" in result.err and "stays suspended" in result.err
    assert cli("ps").out.startswith("[HITL] ")


def test_cancelling_a_child_agents_pid_cancels_the_run_that_drives_it(cli: Cli, workdir: Path) -> None:
    """The child was cancelled alone: its parent still showed the call waiting, and the parent's next resume
    failed ("child ended PREEMPTED: cancelled"). The cancel now goes to the run that drives the child."""
    (workdir / "kids.py").write_text(KIDS)
    tools = ("--tool", "tools.py:search", "--tool", "tools.py:delete_file", "--destructive", "--budget", "api=10")
    cli("run", "kids.py:parent", *tools, "--pid", "p4")
    done = cli("cancel", "p4::cli_test_deleter-0", "--db", "castor.db", "--as", "ann")
    assert done.out == "p4::cli_test_deleter-0: cancelled (with run p4, which drives this child agent)\n", done.err
    assert "[HITL]" not in cli("ps").out and "p4" not in cli("approvals", "--db", "castor.db").out
    resumed = cli("resume", "p4")
    assert resumed.code == 0 and 'Pending: delete_file(path="/tmp/child")' in resumed.out, resumed.out + resumed.err
    approved = cli("approve", "p4")
    assert approved.code == 0 and "Result: parent got Deleted /tmp/child" in approved.out, approved.out
    assert calls(workdir) == ["search", "delete_file"]
