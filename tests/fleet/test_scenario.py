"""The fleet end to end with real processes: two worker pools, coordinators, the CLI.

50 runs are submitted; some wait for a human and are approved or rejected from the CLI; one coordinator
is SIGKILLed midway and another drained with SIGTERM. Every run finishes; every tool call the journals
record as done ran exactly once (the tools count themselves); the shared budget is never overspent.
"""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from castor.backends.redis import keys, redis_backend
from castor.checkpoint import SyscallRecord
from castor.fleet.client import FleetClient, new_run
from tests.fleet.procs import Fleet, agent_spec, tool_spec

TOOLS = [tool_spec(n) for n in ("ticket", "fetch", "store", "remove")]
RUNS, WITH_APPROVAL, SCOPE_LIMIT = 50, 10, 200.0  # the team's runs want up to 36*5 + 10*4 = 220 api


async def set_scope(fleet: Fleet) -> None:
    backend = redis_backend(fleet.url, prefix=fleet.prefix)
    try:
        await backend.budgets.set_scope("team", {"api": SCOPE_LIMIT})
    finally:
        await backend.close()


async def submit_all(fleet: Fleet, agents: list[str], scopes: tuple[str, ...] = ("team",)) -> list[str]:
    backend = redis_backend(fleet.url, prefix=fleet.prefix)
    client = FleetClient(fleet.url, fleet.prefix)
    try:
        pids = []
        for agent in agents:
            cp = new_run(agent_spec(agent), TOOLS, budgets={"api": 10}, scopes=scopes)
            pids.append(await client.submit(backend, cp))
        return pids
    finally:
        await client.close()
        await backend.close()


async def journals(fleet: Fleet, pids: list[str]) -> tuple[dict[str, list[SyscallRecord]], float]:
    backend = redis_backend(fleet.url, prefix=fleet.prefix)
    try:
        out = {pid: await backend.journal.history(pid) for pid in pids}
        return out, (await backend.budgets.read_scope("team"))["api"][1]
    finally:
        await backend.close()


def finished(fleet: Fleet) -> int:
    return int(fleet.redis.zcard(keys.runs_by_status(fleet.prefix, "COMPLETED")))


def steps(fleet: Fleet, pid: str) -> int:
    return int(fleet.redis.hget(keys.journal_meta(fleet.prefix, pid), "len") or 0)


def driving(fleet: Fleet, name: str) -> int:
    return int(fleet.redis.hget(keys.coordinator(fleet.prefix, name), "driving") or 0)


def wait_for(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def decide_pending(fleet: Fleet, decided: dict[str, str], pool: ThreadPoolExecutor) -> None:
    """Approve or reject (alternately, by arrival) what waits, from the CLI; in-doubt calls are approved."""
    jobs = []
    for item in fleet.cli_json("approvals"):
        pid = item["pid"]
        key = f"{pid}@{item['step']}"
        if key in decided:
            continue
        reject = item["tool"] == "remove" and sum(v == "reject" for v in decided.values()) < 4 and len(decided) % 2
        decided[key] = "reject" if reject else "approve"
        args = ("reject", pid, "--reason", "not today") if reject else ("approve", pid)
        jobs.append(pool.submit(fleet.cli, *args, "--as", "tester", check=False))
    for job in jobs:
        job.result()


@pytest.mark.timeout(300)  # 15-25 s on an idle machine; its waits allow for one loaded by other jobs
def test_fleet_of_two_pools_and_three_coordinators(fleet: Fleet) -> None:
    fleet.worker("web", 6)
    fleet.worker("fs", 4)
    fleet.coordinator("co-a", concurrency=5)
    fleet.coordinator("co-b", concurrency=5)
    asyncio.run(set_scope(fleet))
    tools = [a for t in TOOLS for a in ("--tool", t)]
    pids = [  # two from the CLI, the rest through the same client code in this process
        fleet.cli("submit", agent_spec("job"), *tools, "--budget", "api=10", "--scope", "team").stdout.strip()
        for _ in range(2)
    ]
    approvals = asyncio.run(submit_all(fleet, ["job_with_approval"] * WITH_APPROVAL))
    pids += approvals

    decided: dict[str, str] = {}
    stop = threading.Event()

    def humans() -> None:  # decide from the CLI whatever waits, while coordinators come and go
        with ThreadPoolExecutor(3) as pool:
            while not stop.is_set() and finished(fleet) < RUNS:
                decide_pending(fleet, decided, pool)
                time.sleep(0.2)

    deciding = threading.Thread(target=humans, daemon=True)
    deciding.start()
    try:
        # The first removes are decided (approve, reject, ...) and journaled while the team's budget can pay
        # for them; only then come the other runs, which compete for what is left and may be denied. (Sent
        # all at once, the runs without approvals could spend the budget before a slow human approves one.)
        wait_for("the first decided removes", lambda: sum(steps(fleet, pid) >= 3 for pid in approvals) >= 4, 60)
        pids += asyncio.run(submit_all(fleet, ["job"] * (RUNS - 14)))
        # Midway, co-a dies without a word; its runs are taken over when their leases run out.
        wait_for("co-a midway", lambda: finished(fleet) >= 8 and driving(fleet, "co-a") > 0, 60)
        fleet.stop("co-a", signal.SIGKILL)
        # Then co-b, alone now, is drained while it drives two long runs: it lets their in-flight steps
        # finish and hands them back to the queue; co-c, started after, continues them.
        longs = asyncio.run(submit_all(fleet, ["long_job"] * 2, scopes=()))  # the team's budget may be spent
        pids += longs
        wait_for("the long runs to start", lambda: all(steps(fleet, pid) >= 2 for pid in longs), 60)
        assert fleet.stop("co-b", signal.SIGTERM) == 0, fleet.log("co-b")[-5000:]
        said = fleet.log("co-b")  # at the signal, not only once the drain is over
        assert said.index("co-b: stopping: no new runs;") < said.index("co-b: draining "), said[-3000:]
        fleet.coordinator("co-c", concurrency=5)
        wait_for("every run to finish", lambda: finished(fleet) == RUNS, 90)
    finally:
        stop.set()
        deciding.join(30)

    assert len(set(pids)) == RUNS
    handed = re.findall(r"co-b: run (\S+) handed back to the queue", fleet.log("co-b"))
    assert set(longs) <= set(handed), fleet.log("co-b")[-2000:]
    for pid in handed:
        assert re.search(rf"run {re.escape(pid)} (starts|resumes)", fleet.log("co-c")), f"{pid} was not continued"
    assert "co-b: leases ran out on" in fleet.log("co-b")  # co-a's runs were taken over
    assert "co-a" not in {c["name"] for c in fleet.cli_json("coordinators")["coordinators"]}

    logs, scope_used = asyncio.run(journals(fleet, pids))
    ran_tickets = sum(isinstance(log[0].response, str) for log in logs.values())
    assert fleet.count("tickets") == ran_tickets >= RUNS - 10  # each ran once, whoever replayed it
    charged = 0.0
    rejected = approved = 0
    for pid, log in logs.items():
        run_charged = sum(r.charged.get("api", 0.0) for r in log)
        assert run_charged <= 10
        charged += run_charged if pid not in longs else 0.0
        for record in log[1:]:
            tag = record.arguments["tag"]
            if isinstance(record.response, str):  # the tool ran: exactly once
                assert fleet.count(tag) == 1, (pid, tag, fleet.count(tag))
            else:  # denied by the budget or rejected by a human: never ran
                assert record.response["status"] in ("INSUFFICIENT_CAPABILITY", "HITL_REJECTED"), record.response
                assert fleet.count(tag) == 0, (pid, tag)
            if record.tool_name == "remove" and record.was_hitl:
                rejected += isinstance(record.response, dict) and record.response["status"] == "HITL_REJECTED"
                approved += isinstance(record.response, str)
                assert record.decided_by == "tester"
    removes = [r.response if isinstance(r.response, str) else r.response["status"]
               for log in logs.values() for r in log if r.tool_name == "remove"]
    assert approved >= 1 and rejected >= 1, (approved, rejected, removes, decided)
    assert scope_used <= SCOPE_LIMIT
    assert abs(scope_used - charged) < 1e-6  # the scope was charged exactly what the journals say
