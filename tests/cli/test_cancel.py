"""``castor cancel`` of a run that is not running any more says how it ended (or that it was cancelled
already), and a preempted run nobody drives is cancelled at once instead of waiting for a driver."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from castor.backends.redis import redis_backend
from castor.checkpoint import AgentCheckpoint

from .conftest import RUN, Cli


def _store(redis_url: str, redis_prefix: str, **fields: object) -> str:
    cp = AgentCheckpoint(pid=f"run-{fields['status']}".lower(), agent_function_name="agent", capabilities={},
                         **fields)  # type: ignore[arg-type]

    async def save() -> None:
        backend = redis_backend(redis_url, prefix=redis_prefix)
        try:
            await backend.runs.save(cp)
        finally:
            await backend.close()

    asyncio.run(save())
    return cp.pid


@pytest.mark.parametrize(("fields", "said"), [
    ({"status": "COMPLETED", "result": "done"}, "ended already (COMPLETED)"),
    ({"status": "FAILED", "error": "ValueError: boom"}, "ended already (FAILED: ValueError: boom)"),
    ({"status": "PREEMPTED", "preemption_reason": "cancelled", "preemption_payload": {"by": "ann"}},
     "was cancelled already, by ann"),
])
def test_cancel_of_an_ended_run_says_it_ended(cli: Cli, redis_url: str, redis_prefix: str,
                                              fields: dict[str, object], said: str) -> None:
    pid = _store(redis_url, redis_prefix, **fields)
    done = cli("cancel", pid, "--redis", redis_url, "--prefix", redis_prefix)
    assert done.code == 1
    assert done.err == f"castor: error: run {pid!r} {said}; there is nothing to cancel\n"


def test_cancel_of_a_preempted_run_nobody_drives_stops_it(cli: Cli, redis_url: str, redis_prefix: str) -> None:
    pid = _store(redis_url, redis_prefix, status="PREEMPTED", preemption_reason="drained")
    done = cli("cancel", pid, "--redis", redis_url, "--prefix", redis_prefix, "--as", "bob")
    assert (done.code, done.out) == (0, f"{pid}: cancelled\n")
    shown = cli("inspect", pid, "--redis", redis_url, "--prefix", redis_prefix)
    assert "Status: PREEMPTED" in shown.out and "Preempted: cancelled" in shown.out


def test_a_run_of_a_local_store_is_cancelled_unless_a_live_process_drives_it(cli: Cli, workdir: Path) -> None:
    """``castor cancel PID --db castor.db`` said the fleet keeps its state in Redis: an embedded run could not
    be cancelled. A waiting one is now (its call no longer waits), once; a driven one is refused."""
    from castor.backends.sqlite import sqlite_backend
    from castor.kernel.claims import DRIVE_STEP, new_holder

    pid = cli(*RUN).pid  # waits for a human at delete_file
    done = cli("cancel", pid, "--db", "castor.db", "--as", "ann")
    assert done.code == 0 and done.out == f"{pid}: cancelled\n", done.err
    assert "PREEMPTED" in cli("inspect", pid, "--db", "castor.db").out
    assert pid not in cli("approvals", "--db", "castor.db").out
    again = cli("cancel", pid, "--db", "castor.db")
    assert again.code == 1 and "was cancelled already, by ann" in again.err

    driven = cli(*RUN).pid

    async def hold() -> str:  # as a live `castor resume` of this machine holds it
        backend = sqlite_backend(str(workdir / "castor.db"))
        try:
            holder = new_holder()
            assert (await backend.journal.claim(driven, DRIVE_STEP, 0, holder, 15.0)).state == "claimed"
            return holder
        finally:
            await backend.close()

    holder = asyncio.run(hold())
    refused = cli("cancel", driven, "--db", "castor.db")
    assert refused.code == 1 and f"is being driven by {holder}" in refused.err, refused.err
    assert driven in cli("approvals", "--db", "castor.db").out  # still waiting, untouched


def test_a_pid_missing_under_one_prefix_names_the_prefix_that_holds_it(cli: Cli, redis_url: str,
                                                                        redis_prefix: str) -> None:
    """A store URL (or ``CASTOR_REDIS_PREFIX``) naming another prefix of the same Redis found nothing and said
    only that: the error now says which prefix holds the run, and how to name it."""
    pid = _store(redis_url, redis_prefix, status="COMPLETED", result="done")
    missed = cli("inspect", pid, "--redis", redis_url, "--prefix", f"{redis_prefix}-other")
    assert missed.code == 1
    assert missed.err == (
        f"castor: error: no run with pid {pid!r}; this Redis holds a run {pid!r} under the key prefix "
        f"{redis_prefix!r}, not '{redis_prefix}-other': name it with --prefix {redis_prefix}\n"
    )
    url = f"{redis_url}?prefix={redis_prefix}-other"
    assert missed.err.replace(f"--prefix {redis_prefix}", f"?prefix={redis_prefix} in the store URL, or "
                              f"CASTOR_REDIS_PREFIX={redis_prefix}") == cli("inspect", pid, "--store", url).err
    nowhere = cli("inspect", "no-such-run", "--redis", redis_url, "--prefix", redis_prefix)
    assert nowhere.err == "castor: error: no run with pid 'no-such-run'\n"
    pattern = cli("inspect", "run-*", "--redis", redis_url, "--prefix", f"{redis_prefix}-other")
    assert pattern.err == "castor: error: no run with pid 'run-*'\n"  # a pid's * is no pattern


def test_a_cancel_that_looked_in_the_fleet_says_so_and_points_at_the_local_store(
    cli: Cli, redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``castor cancel PID`` without a store looks in the fleet's Redis; for a run of ``./castor.db`` its error
    said "this looked in ./castor.db" and told the user to add --config: the opposite of both."""
    pid = cli(*RUN).pid  # waits for a human in ./castor.db
    monkeypatch.setenv("CASTOR_REDIS_URL", redis_url)  # the fleet's Redis, under this test's prefix
    monkeypatch.setenv("CASTOR_REDIS_PREFIX", redis_prefix)
    missed = cli("cancel", pid)
    assert missed.code == 1
    assert missed.err == (f"castor: error: no run with pid {pid!r}; this looked in the fleet's Redis "
                          f"({redis_url}, prefix {redis_prefix}): for a run of ./castor.db (castor run), "
                          "add --db castor.db\n"), missed.err
    assert cli("cancel", pid, "--db", "castor.db").out == f"{pid}: cancelled\n"
