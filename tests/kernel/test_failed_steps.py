"""A step whose call raised and which the run went past is journaled, and a replay raises the same error.

Before, such a step left a hole in the journal: every later record was held behind it and dropped when the
run stopped, so a resume ran those later calls again (a non-idempotent tool twice) and a completed run kept
an empty journal. Every framework that hands a tool's error to its model and goes on hit it. A failure the
run stopped at is still not journaled: a resume retries it (``test_finished_runs``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from castor import AgentRegistry, Castor, UnknownToolError, castor_agent
from castor.backends.sqlite import sqlite_backend
from castor.cli._render import step_line
from castor.kernel.failed_steps import ReplayedFailure, describe, raised
from castor.lib import join, model_call, parallel, spawn, tool
from castor.seams import Backend

CHARGED: list[int] = []
FLAKY: list[int] = []


async def charge(amount: int) -> str:
    """Not idempotent: each run of it is a payment."""
    CHARGED.append(amount)
    return f"charged {amount}"


async def flaky() -> str:
    """Fails the first time it runs in a test, then works: a replay must not run it again."""
    FLAKY.append(1)
    if len(FLAKY) == 1:
        raise ValueError("the service said no")
    return "fine"


async def delete_file(path: str) -> str:
    return f"deleted {path}"


@pytest.fixture(autouse=True)
def _fresh() -> None:
    CHARGED.clear()
    FLAKY.clear()


def kernel(**options: object) -> Castor:
    return Castor(tools=[charge, flaky, delete_file], destructive=["delete_file"], **options)  # type: ignore[arg-type]


async def goes_on() -> list[str]:
    """Catches the failure, charges, then asks for a destructive call: a human decides it."""
    seen = []
    try:
        seen.append(await tool("flaky"))
    except ValueError as error:  # the very class, live and replayed
        seen.append(f"caught {error!r}")
    seen.append(await tool("charge", amount=5))
    seen.append(await tool("delete_file", path="/tmp/old"))
    return seen


async def test_a_caught_failure_is_journaled_and_the_steps_after_it_are_not_run_again() -> None:
    k = kernel()
    cp = await k.run(goes_on)
    assert cp.status == "SUSPENDED_FOR_HITL" and cp.pending_step == 2
    assert [r.tool_name for r in cp.syscall_log] == ["flaky", "charge"]  # no hole at step 0
    failed = cp.syscall_log[0]
    assert failed.response is None and failed.failure is not None
    assert failed.failure["error_type"] == "ValueError" and failed.failure["message"] == "the service said no"
    assert step_line(0, failed) == "  [0] flaky() -> raised ValueError: the service said no"  # castor inspect
    await k.approve(cp)
    cp = await k.run(goes_on, checkpoint=cp)
    assert cp.status == "COMPLETED"
    assert cp.result == ["caught ValueError('the service said no')", "charged 5", "deleted /tmp/old"]
    assert CHARGED == [5] and len(FLAKY) == 1  # neither ran again: both came from the journal


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Backend]:
    """A new backend on one store at each call, as each process has."""
    if request.param == "sqlite":
        return lambda: sqlite_backend(str(tmp_path / "castor.db"))
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    from castor.backends.redis import redis_backend

    return lambda: redis_backend(url, prefix=prefix)


async def test_a_new_process_replays_the_failure_from_the_store(store: Callable[[], Backend]) -> None:
    first = kernel(store=store())
    cp = await first.run(goes_on, pid="goes-on")
    await first.approve(cp)
    await first.close()
    second = kernel(store=store())  # another process: only the store is shared
    try:
        done = await second.run(goes_on, pid="goes-on")
        assert done.status == "COMPLETED" and done.result[0] == "caught ValueError('the service said no')"
        assert CHARGED == [5] and len(FLAKY) == 1
    finally:
        await second.close()


async def test_a_completed_run_that_went_past_a_failure_keeps_its_whole_journal() -> None:
    async def agent() -> str:
        with contextlib.suppress(UnknownToolError):
            await tool("nope", x=1)
        return await tool("charge", amount=1)

    k = kernel()
    cp = await k.run(agent)
    assert cp.status == "COMPLETED" and [r.tool_name for r in cp.syscall_log] == ["nope", "charge"]
    forked = await k.run(agent, checkpoint=cp.fork(at_step=2))
    assert forked.status == "COMPLETED" and CHARGED == [1]  # the fork replayed both steps


async def test_a_run_that_completes_after_catching_its_last_calls_error_journals_it(
    store: Callable[[], Backend],
) -> None:
    """The agent catches the error of its last call and returns. No later call journaled the failure, and
    a fork of the finished run (or its replay in another process) made the call again: a payment twice."""
    async def pays_last() -> str:
        await tool("charge", amount=1)
        try:
            await tool("flaky")
        except ValueError:
            return "paid, then the service said no"
        return "paid twice"

    first = kernel(store=store())
    cp = await first.run(pays_last, pid="pays-last")
    assert cp.status == "COMPLETED" and [r.tool_name for r in cp.syscall_log] == ["charge", "flaky"]
    assert cp.syscall_log[1].failure is not None and cp.syscall_log[1].failure["error_type"] == "ValueError"
    await first.close()
    second = kernel(store=store())  # another process
    try:
        forked = await second.run(pays_last, checkpoint=(await second.aload("pays-last")).fork(at_step=2))
        assert forked.result == "paid, then the service said no"
        assert (await second.run(pays_last, pid="pays-last")).result == "paid, then the service said no"
        assert CHARGED == [1] and len(FLAKY) == 1  # neither call made again
    finally:
        await second.close()


async def test_a_run_that_fails_for_its_own_reason_after_catching_a_calls_error_journals_that_failure() -> None:
    """The agent caught the call's error, then failed for a reason of its own: the run went past the step,
    and a resume (once the agent is fixed) must not pay again. An error raised from the step's, or while
    handling it, is the run stopping at the step: a resume retries that one."""
    async def pays_then_breaks() -> str:
        await tool("charge", amount=1)
        with contextlib.suppress(ValueError):
            await tool("flaky")
        raise RuntimeError("the agent's own bug")

    async def fails_over_it() -> str:
        try:
            await tool("flaky")
        except ValueError as error:
            raise RuntimeError("gave up") from error
        return "never"

    k = kernel()
    with pytest.raises(RuntimeError, match="own bug"):
        await k.run(pays_then_breaks, pid="breaks")
    cp = await k.aload("breaks")
    assert cp.status == "FAILED" and [r.tool_name for r in cp.syscall_log] == ["charge", "flaky"]
    with pytest.raises(RuntimeError, match="own bug"):
        await k.run(pays_then_breaks, checkpoint=cp)
    assert CHARGED == [1] and len(FLAKY) == 1  # the resume served both steps

    FLAKY.clear()
    with pytest.raises(RuntimeError, match="gave up"):
        await k.run(fails_over_it, pid="gives-up")
    assert (await k.aload("gives-up")).syscall_log == []  # stopped at the failure: not journaled
    assert (await k.run(fails_over_it, checkpoint=await k.aload("gives-up"))).result == "never"
    assert len(FLAKY) == 2  # retried, and it worked the second time


async def test_a_failure_beside_a_call_that_finished_first_journals_both() -> None:
    """Two calls at once: the second finishes first and waits for the first, which then fails. The agent
    takes the failure (``return_exceptions``): both steps are journaled, nothing is run again on a fork."""
    async def slow_failure() -> str:
        await asyncio.sleep(0.05)
        raise RuntimeError("late")

    async def agent() -> list[str]:
        results = await asyncio.gather(tool("slow_failure"), tool("charge", amount=7), return_exceptions=True)
        return [repr(r) if isinstance(r, BaseException) else r for r in results]

    k = Castor(tools=[slow_failure, charge])
    cp = await k.run(agent)
    assert cp.result == ["RuntimeError('late')", "charged 7"]
    assert [r.tool_name for r in cp.syscall_log] == ["slow_failure", "charge"]
    again = await k.run(agent, checkpoint=cp.fork(at_step=2))
    assert again.result == cp.result and CHARGED == [7]


@pytest.mark.parametrize(
    ("late", "left_behind"),
    [(False, False), (True, False), (True, True)],
    ids=["fails-first", "fails-after-the-suspension", "left-running-by-gather"],
)
async def test_a_failure_beside_a_call_that_waits_for_a_human_is_journaled_before_the_run_suspends(
    late: bool, left_behind: bool
) -> None:
    """Two calls at once: the first fails, the second (destructive) waits for a human. The run went past
    the failure, so it is journaled as the run suspends (or, for a call the agent's ``asyncio.gather`` left
    running when the run stopped, as it fails); the resume after approval raises it again from the journal
    (the failing call is not made again) and runs the destructive call once."""
    failing: list[str] = []
    failed = asyncio.Event()

    async def refuse() -> str:
        failing.append("refuse")  # a call with an effect, even though it raised
        if late:
            await asyncio.sleep(0.05)  # the destructive call reaches its gate and suspends first
        failed.set()
        raise ValueError("refused")

    async def agent() -> str:
        calls = (("refuse", {}), ("delete_file", {"path": "/tmp/x"}))
        try:
            if left_behind:  # gives up at the first exception (the suspension), its other task still running
                await asyncio.gather(*(tool(name, **arguments) for name, arguments in calls))
            else:
                await parallel(*calls)  # Castor's: every call finishes before the run suspends
        except ValueError:
            pass
        return str(await tool("charge", amount=3))

    k = Castor(tools=[refuse, charge, delete_file], destructive=["delete_file"])
    cp = await k.run(agent)
    assert (cp.status, cp.pending_step) == ("SUSPENDED_FOR_HITL", 1)
    await asyncio.wait_for(failed.wait(), 5)
    for _ in range(5):  # the failing task's own journaling, after its error
        await asyncio.sleep(0)
    journaled = await k.backend.journal.history(cp.pid)
    assert [r.tool_name for r in journaled] == ["refuse"] and journaled[0].failure is not None
    await k.approve(cp)
    done = await k.run(agent, checkpoint=await k.aload(cp.pid))
    assert (done.status, done.result) == ("COMPLETED", "charged 3"), done.error
    assert failing == ["refuse"] and CHARGED == [3]  # the failed call ran once, over the run's whole life
    assert [r.tool_name for r in done.syscall_log] == ["refuse", "delete_file", "charge"]


async def test_a_failure_the_run_stops_at_is_not_journaled_and_a_resume_retries_it() -> None:
    async def agent() -> str:
        return await tool("flaky")

    k = kernel()
    with pytest.raises(ValueError):
        await k.run(agent, pid="stops-here")
    failed = await k.aload("stops-here")
    assert failed.status == "FAILED" and failed.syscall_log == []
    done = await k.run(agent, checkpoint=failed)
    assert done.result == "fine" and len(FLAKY) == 2


class TeapotError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"teapot {code}")
        self.code = code


def test_an_error_is_made_again_with_its_class_arguments_and_attributes() -> None:
    again = raised(describe(TeapotError(418)))
    assert type(again) is TeapotError and again.code == 418  # type: ignore[attr-defined]
    assert (str(again), repr(again)) == ("teapot 418", "TeapotError('teapot 418')")
    builtin = raised(describe(KeyError("k")))
    assert type(builtin) is KeyError and str(builtin) == "'k'"


def test_a_class_that_cannot_be_found_again_gets_a_stand_in_with_its_name_str_and_repr() -> None:
    failure = describe(TeapotError(418)) | {"module": "not_imported_anywhere"}
    again = raised(failure)
    assert isinstance(again, ReplayedFailure) and type(again).__name__ == "TeapotError"
    assert (str(again), repr(again)) == ("teapot 418", "TeapotError('teapot 418')")


async def test_a_model_call_that_raised_and_a_fallback_after_it_replay_without_calling_either() -> None:
    """A framework's fallback model (LangChain ``with_fallbacks``): the first call raised, the agent asked
    another model. Both steps are journaled; the replay raises the first error again and serves the second."""
    asked: list[str] = []

    async def down(_request: dict[str, object]) -> dict[str, object]:
        asked.append("down")
        raise ConnectionError("provider unreachable")

    async def backup(_request: dict[str, object]) -> dict[str, object]:
        asked.append("backup")
        return {"text": "hello", "usage": {"input_tokens": 3, "output_tokens": 1}}

    async def agent() -> str:
        request = {"messages": [{"role": "user", "content": "hi"}]}
        try:
            return str((await model_call(request, model="main", invoke=down))["text"])
        except ConnectionError:
            return str((await model_call(request, model="backup", invoke=backup))["text"])

    k = Castor(tools=[])
    cp = await k.run(agent)
    assert cp.result == "hello" and [r.tool_name for r in cp.syscall_log] == ["model:main", "model:backup"]
    replayed = await k.run(agent, checkpoint=cp.fork(at_step=2))
    assert replayed.result == "hello" and asked == ["down", "backup"]


async def test_a_child_that_failed_and_a_parent_that_went_on_replay_without_running_either_again() -> None:
    registry = AgentRegistry()
    ran: list[str] = []

    @castor_agent("unlucky", registry=registry)
    async def unlucky() -> str:
        ran.append("unlucky")
        raise RuntimeError("child gave up")

    async def parent() -> str:
        handle = await spawn("unlucky")
        try:
            await join(handle)
        except RuntimeError as error:  # the child's own error
            return f"{error!r} / {await tool('charge', amount=2)}"
        return "unreachable"

    k = Castor(tools=[charge], agent_registry=registry)
    cp = await k.run(parent)
    assert cp.result == "RuntimeError('child gave up') / charged 2"
    assert [r.tool_name for r in cp.syscall_log] == ["spawn", "join", "charge"]
    again = await k.run(parent, checkpoint=cp.fork(at_step=3))
    assert again.result == cp.result and ran == ["unlucky"] and CHARGED == [2]


def test_an_error_of_a_megabyte_is_kept_cut_and_comes_back_as_a_stand_in() -> None:
    failure = describe(ValueError("x" * 1_000_000))
    assert len(failure["message"]) <= 64 * 1024 and "args" not in failure
    again = raised(failure)
    assert isinstance(again, ReplayedFailure) and type(again).__name__ == "ValueError"


async def test_a_failed_step_is_journaled_before_the_next_call_goes_out() -> None:
    """So a process lost while the next call runs (on a worker that journals it) leaves no hole behind."""
    seen: list[bool] = []

    async def peek() -> str:
        stored = await k.backend.journal.get("peeking", 0)
        seen.append(stored is not None and stored.failure is not None)
        return "peeked"

    async def agent() -> str:
        with contextlib.suppress(ValueError):
            await tool("flaky")
        return str(await tool("peek"))

    k = Castor(tools=[flaky, peek])
    cp = await k.run(agent, pid="peeking")
    assert cp.result == "peeked" and seen == [True]


async def punch_hole(backend: Backend, pid: str, step: int) -> None:
    """Take step ``step``'s record out of the store, as a process lost before it journaled a failed step
    leaves it, while a worker had journaled the steps after it."""
    journal: Any = backend.journal
    if hasattr(journal, "db"):  # SQLite
        journal.db.execute("DELETE FROM journal WHERE run_id = ? AND step = ?", (pid, step))
        return
    from castor.backends.redis import keys

    await journal._conn.command("zremrangebyscore", keys.journal(journal._prefix, pid), step, step)
    await journal._conn.command("hset", keys.journal_meta(journal._prefix, pid), "len", step)


async def test_a_hole_a_lost_process_left_at_a_failed_step_is_filled_from_its_recorded_failure(
    store: Callable[[], Backend]
) -> None:
    async def agent() -> list[str]:  # as a framework does: any error goes to the model as text
        seen = []
        try:
            seen.append(await tool("flaky"))
        except Exception as error:
            seen.append(f"caught {error}")
        seen.append(await tool("charge", amount=5))
        seen.append(await tool("delete_file", path="/tmp/old"))
        return seen

    first = kernel(store=store())
    cp = await first.run(agent, pid="holed")
    assert cp.status == "SUSPENDED_FOR_HITL" and [r.tool_name for r in cp.syscall_log] == ["flaky", "charge"]
    await first.approve(cp)
    await punch_hole(first.backend, "holed", 0)
    await first.close()
    second = kernel(store=store())  # the process that takes the run over
    try:
        done = await second.run(agent, pid="holed")
        assert done.status == "COMPLETED", done.error
        assert done.result[0] == "caught ValueError: the service said no"  # as a worker's RemoteToolError says
        assert CHARGED == [5] and len(FLAKY) == 1  # neither the failed call nor the one after it ran again
        assert [r.tool_name for r in done.syscall_log] == ["flaky", "charge", "delete_file"]
    finally:
        await second.close()


async def test_a_store_that_fails_to_journal_a_failure_leaves_no_hole_behind_the_call_that_saw_it() -> None:
    """The failure record goes to the store before the next call goes out. If that write fails, the next
    call fails with it (the agent may catch that too), and a later call journals both failed steps first."""
    from castor.backends.memory import memory_backend
    from castor.errors import BackendUnavailable

    backend = memory_backend()
    append, refused = backend.journal.append, []

    async def flaky_append(run_id: str, step: int, record: Any) -> None:
        if record.failure is not None and not refused:
            refused.append(step)
            raise BackendUnavailable("the store is away for a moment")
        await append(run_id, step, record)

    backend.journal.append = flaky_append  # type: ignore[method-assign]

    async def agent() -> list[str]:
        seen = []
        for name in ("flaky", "charge"):  # flaky fails; charge's call then finds the store away
            try:
                seen.append(str(await tool(name, **({"amount": 1} if name == "charge" else {}))))
            except Exception as error:
                seen.append(type(error).__name__)
        seen.append(str(await tool("charge", amount=2)))
        return seen

    k = kernel(store=backend)
    cp = await k.run(agent)
    assert cp.result == ["ValueError", "BackendUnavailable", "charged 2"] and refused == [0]
    assert [(r.tool_name, r.failure is not None) for r in cp.syscall_log] == [
        ("flaky", True), ("charge", True), ("charge", False)]
    assert CHARGED == [2]  # the call that found the store away never ran
