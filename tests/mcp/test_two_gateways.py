"""Two gateways serving one run at once (two replicas behind a load balancer, or a client that retries a
call on another gateway while the first still waits on it): a destructive call runs once, only once
decided, and no call waits without end for the other gateway's session to let the run go."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from mcp import Client

from castor.mcp.server import build_server
from castor.seams import Backend
from tests.mcp.mcp_tools import lines
from tests.mcp.test_gateway import decide_when_waiting, gateway, text


async def test_a_retry_on_another_gateway_while_the_first_waits_runs_the_call_once(
    db: str, log: Path, operator: Backend
) -> None:
    """Both gateways' calls wait for the one decision; whichever drives the run runs the call, and the
    other answers the same key from the journal instead of waiting for that gateway's session to idle out
    (it used to, 15 minutes, its drive claimed after the run had been read)."""
    meta = {"castor/run": "shared-run", "castor/idempotency_key": "k-1"}
    first, second = gateway(db, pid=None, approval_timeout=20.0), gateway(db, pid=None, approval_timeout=20.0)
    async with Client(build_server(first)) as one, Client(build_server(second)) as two:
        waiting = asyncio.create_task(one.call_tool("append_line", {"text": "once"}, meta=meta))
        await asyncio.sleep(0.3)
        retried = asyncio.create_task(two.call_tool("append_line", {"text": "once"}, meta=meta))
        await asyncio.sleep(0.3)
        await decide_when_waiting(operator, "shared-run", "approve")
        answers = await asyncio.wait_for(asyncio.gather(waiting, retried), 15)
    await first.close()
    await second.close()
    assert [text(a) for a in answers] == ["appended once"] * 2
    assert lines(log) == 1


async def test_a_call_on_a_run_another_gateway_holds_is_told_so_in_time(
    db: str, log: Path, operator: Backend
) -> None:
    """A run another gateway's session holds (idle, for up to ``idle_after``): a call without a key for it
    is told so after ``approval_timeout``, and nothing of it runs."""
    meta = {"castor/run": "held-run"}
    first, second = gateway(db, pid=None), gateway(db, pid=None, approval_timeout=0.5)
    async with Client(build_server(first)) as one, Client(build_server(second)) as two:
        assert text(await one.call_tool("add", {"a": 1, "b": 2}, meta=meta)) == "3"
        told = await asyncio.wait_for(two.call_tool("add", {"a": 2, "b": 2}, meta=meta), 10)
        assert told.is_error and "is driven by another process" in text(told), text(told)
        assert text(await one.call_tool("add", {"a": 3, "b": 3}, meta=meta)) == "6"  # the first goes on
    await first.close()
    await second.close()
    assert [r.response for r in await operator.journal.history("held-run")] == [3, 6]


async def test_a_gateway_that_waited_for_the_run_starts_from_what_the_other_left(
    db: str, log: Path, operator: Backend
) -> None:
    """While one gateway waits for the run, the other serves more calls on it (keys and journal grow). The
    waiting one used to drive from the run as it had read it before it waited: it issued its call at a
    step already journaled, and saved the run without the other's keys, so a retry of those ran again."""
    meta = {"castor/run": "busy-run"}
    first = gateway(db, pid=None, speculative=True)
    second = gateway(db, pid=None, speculative=True, approval_timeout=20.0)
    async with Client(build_server(first)) as one, Client(build_server(second)) as two:
        assert text(await one.call_tool("append_line", {"text": "a"}, meta=meta | {"castor/idempotency_key": "k1"}))
        waiting = asyncio.create_task(two.call_tool("add", {"a": 1, "b": 1}, meta=meta))
        await asyncio.sleep(0.3)
        assert text(await one.call_tool("append_line", {"text": "b"}, meta=meta | {"castor/idempotency_key": "k2"}))
        await first.close()  # the first gateway lets go of the run
        assert text(await asyncio.wait_for(waiting, 10)) == "2"
        retried = await two.call_tool("append_line", {"text": "b"}, meta=meta | {"castor/idempotency_key": "k2"})
    await second.close()
    assert text(retried) == "appended b" and not retried.is_error
    assert log.read_text() == "a\nb\n"  # the retry answered from the journal, not run again
    assert [r.request["tool_name"] for r in await operator.journal.history("busy-run")] == [
        "append_line", "append_line", "add"]


async def test_a_gateway_that_stalled_while_another_took_the_run_over_writes_nothing_over_it(
    db: str, log: Path, operator: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first gateway's loop stalls longer than its drive's lease (emulated: its clock says so, and the
    second takes the run over as from a lapsed holder). Its next call used to save the run's header as it
    last saw it (its idempotency keys, without the second's) before anything checked the drive, so a retry
    of the second's call ran again. It now ends its drive first, writes nothing, and waits for the run."""
    from castor.kernel import claims

    meta = {"castor/run": "stalled-run"}
    first = gateway(db, pid=None, speculative=True, approval_timeout=0.5)
    second = gateway(db, pid=None, speculative=True, approval_timeout=20.0)
    async with Client(build_server(first)) as one, Client(build_server(second)) as two:
        assert text(await one.call_tool("append_line", {"text": "a"}, meta=meta | {"castor/idempotency_key": "k1"}))
        drive = first.sessions["stalled-run"].ready.result().drive
        assert drive is not None
        drive.sure_until = 0.0  # its last renewal is older than half a lease: it stalled
        with monkeypatch.context() as lapsed:
            lapsed.setattr(claims, "holder_gone", lambda found: True)
            taken = await two.call_tool("append_line", {"text": "b"}, meta=meta | {"castor/idempotency_key": "k2"})
        assert text(taken) == "appended b"
        told = await one.call_tool("append_line", {"text": "c"}, meta=meta | {"castor/idempotency_key": "k3"})
        assert told.is_error and "is driven by another process" in text(told), text(told)
        retried = await two.call_tool("append_line", {"text": "b"}, meta=meta | {"castor/idempotency_key": "k2"})
    await first.close()
    await second.close()
    assert text(retried) == "appended b" and not retried.is_error
    assert log.read_text() == "a\nb\n"  # the retry answered from the journal; c was not run
    assert [r.request["arguments"]["text"] for r in await operator.journal.history("stalled-run")] == ["a", "b"]
