"""The fleet from the command line, with coordinators that run tools in their own process (no pools):
submit, ps, coordinators, approve, cancel, fork, and the refusal to resume a run whose code changed."""

from __future__ import annotations

import re
import textwrap
import time
from pathlib import Path
from typing import Any

from tests.fleet.procs import Fleet
from tests.fleet.test_fencing import status
from tests.fleet.test_scenario import wait_for

AGENT = '''
import time
from castor import castor_tool
from castor.lib import tool

from agent_helpers import DONE


def note(text: str) -> str:
    return f"noted {text}"


@castor_tool(consumes="api", cost_per_use=1.0)
def nap(seconds: float) -> str:
    time.sleep(seconds)
    return "rested"


@castor_tool(destructive=True)
def drop(name: str) -> str:
    return f"dropped {name}"


async def work():
    await tool("note", text="one")
    await tool("drop", name="old")
    await tool("note", text="two")
    return DONE


async def sleepy():
    await tool("note", text="start")
    for _ in range(20):
        await tool("nap", seconds=0.6)  # 12 s: still running when the CLI, slow on a loaded machine, cancels it
    return "slept"
'''


def write_agent(tmp: Path) -> Path:
    path = tmp / "agent_mod.py"
    path.write_text(textwrap.dedent(AGENT))
    path.with_name("agent_helpers.py").write_text('DONE = "done"\n')  # a local module it imports: its code too
    return path


def submit(fleet: Fleet, path: Path, agent: str) -> str:
    tools = [a for n in ("note", "nap", "drop") for a in ("--tool", f"{path}:{n}")]
    return fleet.cli("submit", f"{path}:{agent}", *tools, "--budget", "api=50").stdout.strip()


def run_json(fleet: Fleet, pid: str) -> dict[str, Any]:
    data: dict[str, Any] = fleet.cli_json("inspect", pid)
    return data


def test_submit_ps_coordinators_approve_cancel_fork(fleet: Fleet, tmp_path: Path) -> None:
    path = write_agent(tmp_path)
    fleet.coordinator("co-1", executor="local", lease=2.0, concurrency=4)
    pid = submit(fleet, path, "work")
    wait_for("the run to park", lambda: status(fleet, pid) == "SUSPENDED_FOR_HITL", 20)
    row = next(r for r in fleet.cli_json("ps") if r["pid"] == pid)
    assert row["parked"] and row["pending"] == "drop@1" and row["owner"] is None
    [waiting] = fleet.cli_json("approvals")
    assert (waiting["pid"], waiting["step"], waiting["tool"]) == (pid, 1, "drop")
    [co] = fleet.cli_json("coordinators")["coordinators"]
    assert (co["name"], co["concurrency"], co["state"]) == ("co-1", 4, "running")
    assert "step 1 approved by ann" in fleet.cli("approve", pid, "--as", "ann").stdout
    wait_for("the run to finish", lambda: status(fleet, pid) == "COMPLETED", 20)
    run = run_json(fleet, pid)
    assert run["result"] == "done" and run["syscall_log"][1]["decided_by"] == "ann"

    fork = fleet.cli_json("fork", pid, "--at-step", "1")["pid"]
    wait_for("the fork to park", lambda: status(fleet, fork) == "SUSPENDED_FOR_HITL", 20)
    assert run_json(fleet, fork)["syscall_log"][0] == run["syscall_log"][0]  # the shared step, replayed
    assert "cancelled" in fleet.cli("cancel", fork).stdout  # parked: stopped at once
    forked = run_json(fleet, fork)
    assert (forked["status"], forked["preemption_reason"]) == ("PREEMPTED", "cancelled")
    assert fleet.cli_json("approvals") == []

    other = fleet.cli_json("fork", pid, "--at-step", "1", "--pid", f"{pid}-no")["pid"]
    wait_for("the second fork to park", lambda: status(fleet, other) == "SUSPENDED_FOR_HITL", 20)
    assert "step 1 rejected by ann" in fleet.cli("reject", other, "--reason", "no", "--as", "ann").stdout

    slow = submit(fleet, path, "sleepy")
    wait_for("the slow run to be driven", lambda: len(run_json(fleet, slow)["syscall_log"]) >= 2, 20)
    driven = run_json(fleet, slow)  # while its coordinator drives it: the stored header is as of its start
    spent = sum(record["charged"].get("api", 0.0) for record in driven["syscall_log"])
    assert spent >= 1 and driven["capabilities"]["api"]["current_usage"] == spent  # usage from its journal
    assert "cancel requested" in fleet.cli("cancel", slow).stdout  # driven: its coordinator stops it
    wait_for("the slow run to stop", lambda: status(fleet, slow) == "PREEMPTED", 20)
    assert run_json(fleet, slow)["preemption_reason"] == "cancelled"
    assert len(run_json(fleet, slow)["syscall_log"]) < 21
    assert fleet.cli("cancel", pid, check=False).returncode == 1  # finished: nothing to cancel


def test_a_coordinator_refuses_to_resume_a_run_whose_code_changed(fleet: Fleet, tmp_path: Path) -> None:
    path = write_agent(tmp_path)
    fleet.coordinator("co-1", executor="local", lease=2.0)
    pid = submit(fleet, path, "work")
    wait_for("the run to park", lambda: status(fleet, pid) == "SUSPENDED_FOR_HITL", 20)
    helper = path.with_name("agent_helpers.py")
    helper.write_text(helper.read_text() + "# edited while the run waited\n")  # only the helper changed
    fleet.cli("approve", pid)
    wait_for("the refusal", lambda: status(fleet, pid) == "PREEMPTED", 20)
    run = run_json(fleet, pid)
    assert run["preemption_reason"] == "code changed"
    assert run["preemption_payload"] == {"files": [str(helper)]}
    assert str(helper) in run["error"] and "--allow-code-change" in run["error"]
    assert str(helper) in fleet.log("co-1")
    time.sleep(0.5)
    assert status(fleet, pid) == "PREEMPTED"  # nobody else picks it up either

    fleet.coordinator("co-2", "--allow-code-change", executor="local", lease=2.0)
    wait_for("the run to finish on co-2", lambda: status(fleet, pid) == "COMPLETED", 20)
    assert run_json(fleet, pid)["result"] == "done"


def test_a_run_whose_code_a_coordinator_cannot_import_waits_for_one_that_can(fleet: Fleet, tmp_path: Path) -> None:
    """A rolling deploy: the coordinator that takes the run has not got its code. It used to fail the
    import, lose the lease, take the run again and again (a traceback each time) and at last fail it as
    "quarantined: its driver died". Now it sets the run aside once, saying why, and a coordinator started
    with the code takes it over and finishes it."""
    path = write_agent(tmp_path)
    pid = submit(fleet, path, "work")
    away = path.rename(path.with_name("agent_mod.py.away"))  # this coordinator's machine lacks the file
    fleet.coordinator("co-old", executor="local", lease=1.0)
    wait_for("the run to be set aside", lambda: status(fleet, pid) == "PREEMPTED", 20)
    run = run_json(fleet, pid)
    assert run["preemption_reason"] == "code unavailable"
    assert run["preemption_payload"]["coordinator"] == "co-old" and "not found" in run["preemption_payload"]["error"]
    assert f"cannot import tool '{path}:" in run["error"] and "waits for a coordinator" in run["error"]
    time.sleep(4)  # four lease times: nobody takes it again, nobody quarantines it
    assert status(fleet, pid) == "PREEMPTED" and run_json(fleet, pid)["error"] == run["error"]
    log = fleet.log("co-old")
    assert log.count("cannot import the code of run") == 1 and "Traceback" not in log and "quarantine" not in log

    away.rename(path)  # the new release has the file, on two coordinators started at once: one takes the run
    for name in ("co-new", "co-new-2"):
        fleet.start(name, "coordinator", "--name", name, "--lease", "1.0", "--executor", "local", "--grace", "5")
    wait_for("the run to park on a new coordinator", lambda: status(fleet, pid) == "SUSPENDED_FOR_HITL", 20)
    fleet.cli("approve", pid)
    wait_for("the run to finish", lambda: status(fleet, pid) == "COMPLETED", 20)
    done = run_json(fleet, pid)
    assert done["result"] == "done"
    assert [r["response"] for r in done["syscall_log"]] == ["noted one", "dropped old", "noted two"]
    assert (fleet.log("co-new") + fleet.log("co-new-2")).count("taking over") == 1


def test_a_coordinator_with_an_agent_list_imports_nothing_else(fleet: Fleet, tmp_path: Path) -> None:
    """Whoever can write a run to the fleet's Redis names the code coordinators import. With
    ``[coordinator] agents`` a coordinator imports only those agents and ``[tools] import``'s tools: a run
    naming other code is set aside before any import, and the listed agent runs as ever."""
    path = write_agent(tmp_path)
    evil = tmp_path / "evil.py"
    marker = tmp_path / "imported"
    evil.write_text(f"open({str(marker)!r}, 'w').write('ran at import')\n\nasync def main():\n    return 'owned'\n")
    config = tmp_path / "locked.toml"
    tools = ", ".join(f'"{path}:{name}"' for name in ("note", "nap", "drop"))
    text = re.sub(r"(?m)^import = \[", f"import = [{tools}, ", fleet.config.read_text())
    config.write_text(f'{text}\n[coordinator]\nagents = ["{path}:work"]\n')

    refused = fleet.cli("submit", f"{evil}:main", "--config", str(config), check=False)
    assert refused.returncode != 0 and "is not among [coordinator] agents of" in refused.stderr
    forged = fleet.cli("submit", f"{evil}:main").stdout.strip()  # no config: as a Redis writer could
    allowed = submit(fleet, path, "work")
    marker.unlink(missing_ok=True)  # whatever the submitting CLI did: the coordinator must not import it
    fleet.start("co-locked", "coordinator", "--name", "co-locked", "--lease", "1.0", "--executor", "local",
                "--config", str(config), "--grace", "5", ready="coordinating")
    wait_for("the forged run to be set aside", lambda: status(fleet, forged) == "PREEMPTED", 20)
    run = run_json(fleet, forged)
    assert run["preemption_reason"] == "code unavailable" and "not among [coordinator] agents" in run["error"]
    assert not marker.exists()  # never imported

    wait_for("the listed agent to park", lambda: status(fleet, allowed) == "SUSPENDED_FOR_HITL", 20)
    fleet.cli("approve", allowed)
    wait_for("the listed agent to finish", lambda: status(fleet, allowed) == "COMPLETED", 20)
    assert "lists no [coordinator] agents" not in fleet.log("co-locked")
