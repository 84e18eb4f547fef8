"""Context memory in a fleet of real processes: a coordinator with a context budget killed (SIGKILL) while a
run's model call is on the ``llm`` pool. The coordinator that takes the run over replays its page-outs from
the journal (the same messages leave at the same steps), the running call answers the step sent again, and
the pages the first coordinator stored in Redis are what the run's search finds."""

from __future__ import annotations

import signal

import pytest

from tests.fleet.procs import Fleet
from tests.fleet.test_llm_fleet import _configure, _llm_worker, _settled, _stats, slow_server  # noqa: F401
from tests.fleet.test_scenario import wait_for
from tests.llm.fake_openai import FakeOpenAI

pytestmark = pytest.mark.fleet

AGENT = "tests/fleet/mmu_agent.py:memory_job"
PAGE_OUT = "sys_kernel_page_out"


def test_a_coordinator_killed_mid_model_call_with_paged_memory_replays_its_page_outs_and_calls_once(
    fleet: Fleet, slow_server: FakeOpenAI  # noqa: F811
) -> None:
    _configure(fleet, slow_server)
    fleet.config.write_text(fleet.config.read_text().replace("[workers]\n", "[workers]\nheartbeat = 2.0\n"))
    _llm_worker(fleet)
    fleet.worker("web")
    fleet.coordinator("co-a", "--context-budget", "40", lease=1.0)
    pid = fleet.cli("submit", AGENT, "--budget", "tokens=5000").stdout.strip()
    wait_for("the second model call to reach the server", lambda: _stats(slow_server)["requests"] == 2, 60)
    fleet.stop("co-a", signal.SIGKILL)  # after the first page-out, mid second call
    fleet.coordinator("co-b", "--context-budget", "40", lease=1.0)
    assert _settled(fleet, pid, 90) == "COMPLETED", fleet.log("co-b")[-3000:]
    run = fleet.cli_json("inspect", pid)
    assert _stats(slow_server)["requests"] == 3  # one per model step: none made again
    steps = [r["request"]["tool_name"] for r in run["syscall_log"]]
    assert steps == ["model:fake-model", PAGE_OUT, "model:fake-model", PAGE_OUT, "model:fake-model", "search_memory"]
    assert run["result"] == {"hits": ["1.0"], "resident": 3} and run["failures"] == []
    used = sum(r["charged"].get("tokens", 0) for r in run["syscall_log"])
    assert run["capabilities"]["tokens"]["current_usage"] == used
