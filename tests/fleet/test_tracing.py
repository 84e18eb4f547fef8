"""OpenTelemetry across real processes: a coordinator's span per syscall is the parent of the worker's span
of the tool task, through the signed trace context in the task's headers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from castor.backends.redis import keys
from castor.tracing import FILE_ENV
from tests.fleet.procs import Fleet
from tests.fleet.test_scenario import submit_all, wait_for

pytestmark = pytest.mark.fleet


def spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.timeout(120)
def test_a_syscall_span_on_the_coordinator_is_the_parent_of_the_task_span_on_the_worker(
    fleet: Fleet, tmp_path: Path
) -> None:
    worker_file, coordinator_file = tmp_path / "worker-spans.jsonl", tmp_path / "coordinator-spans.jsonl"
    fleet.env[FILE_ENV] = str(worker_file)
    for pool in ("web", "fs"):
        fleet.start(f"worker-{pool}", "worker", "--config", str(fleet.config), "--pool", pool, "--pool-impl",
                    "threads", "--fast-start", "--trace", ready=" ready.")
    fleet.env[FILE_ENV] = str(coordinator_file)
    fleet.coordinator("co-t", "--trace")
    (pid,) = asyncio.run(submit_all(fleet, ["job"], scopes=()))
    wait_for("the run to finish", lambda: fleet.redis.zscore(keys.runs_by_status(fleet.prefix, "COMPLETED"), pid)
             is not None, 60)
    wait_for("the worker's five spans", lambda: len(spans(worker_file)) >= 5, 10)

    syscalls = {s["span_id"]: s for s in spans(coordinator_file) if s["name"].startswith("castor.syscall ")}
    tasks = [s for s in spans(worker_file) if s["name"].startswith("castor.task ")]
    assert sorted(s["attributes"]["castor.tool"] for s in syscalls.values()) == [
        "fetch", "fetch", "fetch", "store", "ticket"]
    assert len(tasks) == 5
    for task in tasks:
        parent = syscalls.get(task["parent_id"])
        assert parent is not None, f"{task['name']} has no coordinator parent: {task}"
        assert parent["trace_id"] == task["trace_id"]
        assert parent["attributes"]["castor.tool"] == task["attributes"]["castor.tool"]
        assert parent["attributes"]["castor.step"] == int(task["attributes"]["castor.step"])
        assert task["attributes"]["castor.trace_context"] == "linked"
        assert task["attributes"]["castor.outcome"] == "ok"
        assert task["service"].startswith("castor-worker-") and parent["service"] == "castor-coordinator"
    assert len({s["trace_id"] for s in syscalls.values()}) == 5  # a trace per syscall, not one per run
    assert all(s["attributes"]["castor.run_id"] == pid for s in syscalls.values())
    # No argument travels into a span (the tools' tags carry the run's ticket).
    assert "fetch0" not in worker_file.read_text() + coordinator_file.read_text()


@pytest.mark.timeout(120)
def test_a_task_without_a_trace_context_runs_under_a_root_span(fleet: Fleet, tmp_path: Path) -> None:
    worker_file = tmp_path / "worker-spans.jsonl"
    fleet.env[FILE_ENV] = str(worker_file)
    for pool in ("web", "fs"):
        fleet.start(f"worker-{pool}", "worker", "--config", str(fleet.config), "--pool", pool, "--pool-impl",
                    "threads", "--fast-start", "--trace", ready=" ready.")
    del fleet.env[FILE_ENV]
    fleet.coordinator("co-plain")  # no --trace: its tasks carry no trace context
    (pid,) = asyncio.run(submit_all(fleet, ["job"], scopes=()))
    wait_for("the run to finish", lambda: fleet.redis.zscore(keys.runs_by_status(fleet.prefix, "COMPLETED"), pid)
             is not None, 60)
    wait_for("the worker's five spans", lambda: len(spans(worker_file)) >= 5, 10)
    tasks = spans(worker_file)
    assert {(s["parent_id"], s["attributes"]["castor.trace_context"], s["attributes"]["castor.outcome"])
            for s in tasks} == {("", "absent", "ok")}
