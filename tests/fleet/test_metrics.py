"""Prometheus metrics of a live fleet: the real ``/metrics`` of a coordinator and of a worker, after runs
that call tools on a pool, wait for a human and draw from a shared budget scope."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from typing import Any

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families

from castor.backends.redis import keys
from tests.fleet.procs import Fleet
from tests.fleet.test_scenario import set_scope, submit_all, wait_for
from tests.ports import free_port

pytestmark = pytest.mark.fleet

TOOLS = {"ticket", "fetch", "store", "remove", "slow_write", "pid_of"}
POOLS = {"web", "fs", "llm"}  # llm: the model-call pool every config has


def scrape(port: int) -> dict[str, list[Any]]:
    """The endpoint's samples by metric family name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(s.value for family in samples.values() for s in family
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def wait_scrape(port: int, what: str, check: Any, timeout: float = 60) -> dict[str, list[Any]]:
    got: dict[str, list[Any]] = {}

    def ok() -> bool:
        nonlocal got
        got = scrape(port)
        return bool(check(got))

    wait_for(what, ok, timeout)
    return got


def assert_bounded(samples: dict[str, list[Any]], fleet: Fleet, pids: list[str]) -> None:
    """Every label value comes from a closed set: no pid, run, step or argument, ever."""
    outcomes = {"ok", "error", "validation_error", "budget_denied", "rejected", "modified", "suspended",
                "in_doubt", "refused", "timeout", "dropped", "retry"}
    allowed = {"tool": TOOLS | {"unknown"}, "pool": POOLS | {"unknown", "local"}, "outcome": outcomes,
               "decision": {"approve", "reject", "modify"}, "scope": {"team"}, "resource": {"api"}}
    for family in samples.values():
        for sample in family:
            for label, text in sample.labels.items():
                if label in ("le", "quantile"):
                    continue
                assert label in allowed, f"{sample.name} has an unbounded label {label}={text!r}"
                assert text in allowed[label], f"{sample.name}{{{label}={text!r}}}"
                assert not any(pid in text or text in pid for pid in pids), f"{sample.name} labels a pid: {text}"
                assert "tag" not in text and ":" not in text, f"{sample.name} labels an argument: {text}"


@pytest.mark.timeout(180)
def test_coordinator_and_worker_metrics_of_live_runs(fleet: Fleet) -> None:
    web, co = free_port(), free_port()
    fleet.start("worker-web", "worker", "--config", str(fleet.config), "--pool", "web", "--pool-impl", "threads",
                "--concurrency", "4", "--fast-start", "--metrics-port", str(web), ready=" ready.")
    fleet.coordinator("co-m", "--metrics-port", str(co))
    asyncio.run(set_scope(fleet))
    pids = asyncio.run(submit_all(fleet, ["job", "job_with_approval"]))

    # No worker of pool fs yet: the job's store call waits in that pool's broker queue.
    samples = wait_scrape(co, "a call waiting for a human and one for a worker",
                          lambda s: value(s, "castor_approvals_pending") == 1
                          and value(s, "castor_queue_depth", pool="fs") == 1
                          and value(s, "castor_syscalls_total", tool="remove", outcome="suspended") == 1)
    assert value(samples, "castor_fleet_up") == 1
    assert value(samples, "castor_runs_parked") == 1
    assert value(samples, "castor_leases_held") == 1  # the job, driven while its call waits
    assert value(samples, "castor_queue_depth", pool="web") == 0
    assert {s.labels["pool"] for s in samples["castor_queue_depth"]} == POOLS
    fleet.worker("fs")
    time.sleep(1.1)  # the decision is timed in seconds: let a second pass
    fleet.cli("approve", pids[1], "--as", "tester")

    def done(s: dict[str, list[Any]]) -> bool:
        return int(fleet.redis.zcard(keys.runs_by_status(fleet.prefix, "COMPLETED"))) == 2

    wait_scrape(co, "both runs to finish", done)
    # Scraped again: the wait's sample was taken before it read Redis, so it may predate the last step.
    samples = scrape(co)
    # job: ticket, fetch x3 on web, store on fs; job_with_approval: ticket, fetch, remove, store.
    assert value(samples, "castor_syscalls_total", tool="fetch", pool="web", outcome="ok") == 4
    assert value(samples, "castor_syscalls_total", tool="store", pool="fs", outcome="ok") == 2
    assert value(samples, "castor_syscalls_total", tool="remove", pool="fs", outcome="ok") == 1
    assert value(samples, "castor_syscall_seconds_count", tool="fetch", pool="web") == 4
    assert value(samples, "castor_syscall_seconds_sum", tool="fetch", pool="web") >= 4 * 0.2  # each sleeps 0.2 s
    assert value(samples, "castor_approval_decision_seconds_count", tool="remove", decision="approve") == 1
    assert value(samples, "castor_approval_decision_seconds_sum", tool="remove", decision="approve") >= 1.0
    assert value(samples, "castor_replayed_steps_total") >= 2  # the approved run resumed past ticket, fetch
    assert value(samples, "castor_leases_total") >= 3  # two runs, one taken again after the approval
    assert value(samples, "castor_takeovers_total") == 0
    assert value(samples, "castor_approvals_pending") == 0
    assert value(samples, "castor_budget_used", scope="team", resource="api") > 0
    assert value(samples, "castor_budget_limit", scope="team", resource="api") == 200
    assert_bounded(samples, fleet, pids)

    # A worker counts a task once it has handled it, which may be after its reply let the run finish.
    worker = wait_scrape(web, "the worker to count its tasks",
                         lambda s: value(s, "castor_tasks_total", pool="web", outcome="ok") >= 6)
    # web serves ticket and fetch: 2 tickets, 4 fetches, each timed on the worker.
    assert value(worker, "castor_tasks_total", tool="fetch", pool="web", outcome="ok") == 4
    assert value(worker, "castor_tasks_total", tool="ticket", pool="web", outcome="ok") == 2
    assert value(worker, "castor_tool_seconds_count", tool="fetch", pool="web") == 4
    assert value(worker, "castor_tool_seconds_sum", tool="fetch", pool="web") >= 4 * 0.2
    assert value(worker, "castor_syscalls_total") == 0  # a worker runs no kernel
    assert_bounded(worker, fleet, pids)


def test_a_prefork_worker_refuses_metrics_in_one_line(fleet: Fleet) -> None:
    done = fleet.cli("worker", "--config", str(fleet.config), "--pool", "web", "--pool-impl", "prefork",
                     "--metrics-port", "0", check=False)
    assert done.returncode != 0
    assert "--metrics-port needs --pool-impl threads or solo" in done.stderr


def test_the_bound_check_catches_a_pid_or_an_argument_in_a_label(fleet: Fleet) -> None:
    from prometheus_client.samples import Sample

    pid = "3f2a9c1e0b7d4e5f"
    for labels in ({"tool": pid}, {"tool": "fetch", "run": pid}, {"tool": "fetch", "pool": "web:tag-1"}):
        with pytest.raises(AssertionError):
            assert_bounded({"castor_syscalls": [Sample("castor_syscalls_total", labels, 1.0)]}, fleet, [pid])


@pytest.mark.timeout(120)
def test_a_takeover_is_counted_by_the_coordinator_that_takes_the_run_over(fleet: Fleet) -> None:
    import signal

    fleet.worker("web")
    fleet.worker("fs")
    fleet.coordinator("co-dies")
    (pid,) = asyncio.run(submit_all(fleet, ["slow_job"], scopes=()))
    wait_for("the slow call to start", lambda: int(fleet.redis.hget(keys.journal_meta(fleet.prefix, pid), "len")
                                                   or 0) >= 1, 30)
    fleet.stop("co-dies", signal.SIGKILL)
    port = free_port()
    fleet.coordinator("co-heir", "--metrics-port", str(port))
    samples = wait_scrape(port, "the run to finish on the heir", lambda s: fleet.redis.zscore(
        keys.runs_by_status(fleet.prefix, "COMPLETED"), pid) is not None, 60)
    assert value(samples, "castor_takeovers_total") == 1
    assert value(samples, "castor_quarantines_total") == 0
    assert value(samples, "castor_leases_total") >= 1
    assert value(samples, "castor_replayed_steps_total", tool="ticket") == 1  # the heir replayed the first step
