"""The fault harness's tools and agents, loaded by its workers and coordinators from this file.

Every tool appends one line to ``$CASTOR_FAULTS_RECORDS`` when it starts and one when it finishes
(``start|finish RUN STEP TOOL OS-PID TIME``), in a single ``write`` on a file opened for appending, so
lines from many processes never interleave. ``RUN`` is the run's ticket (its first step's journaled
result), ``STEP`` the journal position the agent gives the call. How long a tool sleeps is its
``kind``: ``$CASTOR_FAULTS_SHORT``, ``$CASTOR_FAULTS_LONG`` or ``$CASTOR_FAULTS_LOST`` seconds.

The ``fx_lost_*`` tools are the calls the worker-loss and long-outage trials lose: the harness's config gives
them a short timeout, because a coordinator notices a lost call only at its deadline (timeout plus a reply
grace); their ``lost`` kind sleeps long enough to be killed mid-call, and well within that timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from typing import Any

from castor import castor_tool
from castor.lib import parallel, tool


def _record(event: str, run: str, step: int, name: str) -> None:
    line = f"{event} {run} {step} {name} {os.getpid()} {time.time():.3f}\n".encode()
    fd = os.open(os.environ["CASTOR_FAULTS_RECORDS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _work(name: str, run: str, step: int, kind: str) -> str:
    _record("start", run, step, name)
    time.sleep(float(os.environ.get(f"CASTOR_FAULTS_{kind.upper()}", "0.2")))
    _record("finish", run, step, name)
    return f"{name} {run}:{step}"


def fx_ticket() -> str:
    """The run's ticket: a unique id, journaled, so a replay names the same run."""
    return uuid.uuid4().hex[:12]


@castor_tool(idempotent=True)
def fx_idem(run: str, step: int, kind: str = "short") -> str:
    """An idempotent call: may run again after its worker died mid-call."""
    return _work("fx_idem", run, step, kind)


def fx_once(run: str, step: int, kind: str = "short") -> str:
    """A non-idempotent call: must run at most once."""
    return _work("fx_once", run, step, kind)


@castor_tool(destructive=True)
def fx_remove(run: str, step: int, kind: str = "short") -> str:
    """A destructive, non-idempotent call: runs only after a human approved it, at most once."""
    return _work("fx_remove", run, step, kind)


@castor_tool(idempotent=True)
def fx_lost_idem(run: str, step: int, kind: str = "lost") -> str:
    """An idempotent call with a short deadline (the config's): the one a worker-loss trial kills."""
    return _work("fx_lost_idem", run, step, kind)


def fx_lost_once(run: str, step: int, kind: str = "lost") -> str:
    """A non-idempotent call with a short deadline (the config's): the one a worker-loss trial kills."""
    return _work("fx_lost_once", run, step, kind)


def fx_queued(run: str, step: int, kind: str = "short") -> str:
    """A non-idempotent call on a pool no worker serves until the cancel trials start one: it waits on its
    queue while its run is cancelled, and must never run."""
    return _work("fx_queued", run, step, kind)


def fx_fail(run: str, step: int) -> str:
    """Always raises: the agent catches the error and goes on, as frameworks that hand a tool's error to
    their model do."""
    raise RuntimeError(f"fx_fail {run}:{step} fails on purpose")


async def _steps(once: str, idem: str, once_tool: str = "fx_once", idem_tool: str = "fx_idem") -> dict[str, Any]:
    t = await tool("fx_ticket")
    await tool("fx_idem", run=t, step=1, kind="short")
    await tool(once_tool, run=t, step=2, kind=once)
    await tool(idem_tool, run=t, step=3, kind=idem)
    await tool("fx_once", run=t, step=4, kind="short")
    return {"ticket": t}


async def short_job() -> dict[str, Any]:
    """Four short calls, idempotent and not, on both pools."""
    return await _steps("short", "short")


async def long_job() -> dict[str, Any]:
    """Like ``short_job``, with a long non-idempotent call in the middle."""
    return await _steps("long", "short")


async def long_idem_job() -> dict[str, Any]:
    """Like ``short_job``, with a long idempotent call in the middle."""
    return await _steps("short", "long")


async def lost_job() -> dict[str, Any]:
    """Like ``short_job``, with a non-idempotent call of a short deadline in the middle (``fx_lost_once``)."""
    return await _steps("lost", "short", once_tool="fx_lost_once")


async def lost_idem_job() -> dict[str, Any]:
    """Like ``short_job``, with an idempotent call of a short deadline in the middle (``fx_lost_idem``)."""
    return await _steps("short", "lost", idem_tool="fx_lost_idem")


async def approval_job() -> dict[str, Any]:
    """A destructive call that waits for a human, then one more call."""
    t = await tool("fx_ticket")
    await tool("fx_remove", run=t, step=1, kind="short")
    await tool("fx_idem", run=t, step=2, kind="short")
    return {"ticket": t}


async def caught_job() -> dict[str, Any]:
    """A call whose error the agent catches, then a non-idempotent call, then a destructive one that waits
    for a human: the failed step is journaled, so nothing before the approval runs again after it."""
    t = await tool("fx_ticket")
    with contextlib.suppress(Exception):  # any error, caught: the agent goes on
        await tool("fx_fail", run=t, step=1)
    await tool("fx_once", run=t, step=2, kind="short")
    await tool("fx_remove", run=t, step=3, kind="short")
    return {"ticket": t}


async def beside_job() -> dict[str, Any]:
    """A destructive call that waits for a human and a non-idempotent call beside it, at once: the second
    finishes before the run suspends (a store whose approval request waits: Redis), so its record is kept
    with the run, and the resume after the approval serves it rather than running the call again."""
    t = await tool("fx_ticket")
    await parallel(("fx_remove", {"run": t, "step": 1, "kind": "short"}),
                   ("fx_once", {"run": t, "step": 2, "kind": "short"}))
    return {"ticket": t}


async def queued_job() -> dict[str, Any]:
    """A call that waits on the queue of a pool with no worker (``fx_queued``), then one more call."""
    t = await tool("fx_ticket")
    await tool("fx_queued", run=t, step=1, kind="short")
    await tool("fx_once", run=t, step=2, kind="short")
    return {"ticket": t}


async def poison_job() -> dict[str, Any]:
    """Kills the process that drives it, on every resume: only a quarantine ends it."""
    t = await tool("fx_ticket")
    os.kill(os.getpid(), signal.SIGKILL)
    return {"ticket": t}


IDEMPOTENT = frozenset({"fx_idem", "fx_lost_idem"})
POOLS = {"fa": ["fx_ticket", "fx_idem", "fx_lost_idem", "fx_fail"], "fb": ["fx_once", "fx_remove", "fx_lost_once"],
         "fq": ["fx_queued"]}
