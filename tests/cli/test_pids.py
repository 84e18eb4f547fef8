"""Pids follow one rule from the moment a run is created, and whatever the CLI reads back from a store
(pid, tool, reason, who decided, error) reaches the terminal escaped: a stored newline or escape
sequence never draws a fake row or recolours the screen."""

from __future__ import annotations

import asyncio
import time

import pytest

from castor import Castor, CastorError, InvalidPidError
from castor._ids import check_pid
from castor.backends.sqlite import sqlite_backend
from castor.checkpoint import AgentCheckpoint, SyscallRecord
from castor.cli._escape import shown
from castor.seams import PendingApproval

from .conftest import RUN, Cli

EVIL = "evil\n[DONE] fake-run  agent  0 steps\x1b[31m\u202e"
ESCAPED = "evil\\n[DONE] fake-run  agent  0 steps\\x1b[31m\\u202e"


async def agent() -> str:
    return "done"


@pytest.mark.parametrize("pid", ["a\nb", "x\x1b[2J", "", " lead", "-opt", "a b", "{tag}", "a/b", "é", "p" * 201])
def test_a_run_with_a_bad_pid_is_refused_before_it_starts(pid: str) -> None:
    kernel = Castor(tools=[])
    with pytest.raises(InvalidPidError, match="a pid is 1 to 200 characters") as raised:
        asyncio.run(kernel.run(agent, pid=pid))
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, CastorError)


def test_good_pids_and_the_pids_castor_derives_follow_the_rule() -> None:
    for pid in ("cleanup-1a2b3c4d", "team_a.run@2:x+y", "r::child-1::fork-3", "p" * 200):
        assert check_pid(pid) == pid
    kernel = Castor(tools=[])
    cp = asyncio.run(kernel.run(lambda: agent()))  # a <lambda>'s pid: its name made safe
    assert cp.pid.startswith("_lambda_-") and check_pid(cp.pid)
    fork = cp.fork(at_step=0)
    assert fork.pid == f"{cp.pid}::fork-0"


def test_the_cli_refuses_a_bad_pid_with_a_usage_error(cli: Cli) -> None:
    for command in (RUN, ("submit", "agents.py:cleanup", "--tool", "tools.py:search")):
        result = cli(*command, "--pid", "bad\npid")
        assert result.code == 2 and "invalid pid 'bad\\npid'" in result.err, result.err
    assert cli("fork", "x", "--at-step", "0", "--pid", "a b").code == 2


def test_shown_escapes_control_characters_and_keeps_the_rest() -> None:
    assert shown(EVIL) == ESCAPED
    assert shown("café ✓ tab\there\r\x7f\x9b") == "café ✓ tab\\there\\r\\x7f\\x9b"


def evil_run() -> AgentCheckpoint:
    """A run as a store could hold it, written without the pid rule (by an old version, or by hand)."""
    record = SyscallRecord(
        request={"tool_name": "rm\nfake", "arguments": {"path": "/x"}}, response="ok\x1b[0m",
        was_hitl=True, decided_by="mallory\r\x1b[2K", timestamp=time.time(),
    )
    return AgentCheckpoint(
        pid=EVIL, status="FAILED", agent_function_name="agent\nrow", error="boom\n[DONE] also fake",
        syscall_log=[record], capabilities={},
    )


def save(backend: object, cp: AgentCheckpoint) -> None:
    async def write() -> None:
        await backend.runs.save(cp)  # type: ignore[attr-defined]
        await backend.journal.append(cp.pid, 0, cp.syscall_log[0])  # type: ignore[attr-defined]
        await backend.close()  # type: ignore[attr-defined]

    asyncio.run(write())


def assert_escaped(text: str) -> None:
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
    assert not any(line.startswith(("[DONE] fake", "[DONE] also")) for line in text.splitlines()), text


def test_a_stored_bad_pid_prints_escaped_from_sqlite(cli: Cli) -> None:
    save(sqlite_backend("castor.db"), evil_run())
    listed = cli("ps")
    assert listed.code == 0 and ESCAPED in listed.out
    assert_escaped(listed.out)
    shown_run = cli("inspect", EVIL)
    assert shown_run.code == 0 and "mallory\\r\\x1b[2K" in shown_run.out and "rm\\nfake" in shown_run.out
    assert_escaped(shown_run.out)
    assert cli("ps", "--json").out.count("\\u001b") >= 1  # JSON escapes by itself


def test_a_stored_bad_pid_prints_escaped_from_redis(cli: Cli, redis_url: str, redis_prefix: str) -> None:
    from castor.backends.redis import redis_backend

    cp = evil_run()
    save(redis_backend(redis_url, prefix=redis_prefix), cp)

    async def pending() -> None:
        backend = redis_backend(redis_url, prefix=redis_prefix)
        await backend.approvals.request(
            PendingApproval(EVIL, 1, "wipe\n[DONE] x", {"p": "\x1b[31m"}, time.time(), reason="why\r\x1b[1A")
        )
        await backend.close()

    asyncio.run(pending())
    store = ("--store", f"{redis_url}?prefix={redis_prefix}")
    for command in (("ps",), ("inspect", EVIL), ("approvals", "--prefix", redis_prefix)):
        result = cli(*command, *store)
        assert result.code == 0, result.err
        assert ESCAPED in result.out, result.out
        assert_escaped(result.out)
    for decision in (("cancel", EVIL, "--as", "eve\x1b[8m"), ("reject", EVIL, "--reason", "no\x1b[8m")):
        result = cli(*decision, *store)
        assert_escaped(result.out + result.err)


def test_a_coordinator_registered_under_a_bad_name_prints_escaped(cli: Cli, redis_url: str, redis_prefix: str) -> None:
    import redis

    from castor.backends.redis import keys

    client = redis.Redis.from_url(redis_url)
    name = "coord\n[DONE] fake\x1b[31m"
    client.zadd(keys.coordinators(redis_prefix), {name: time.time() * 1000 + 60_000})
    client.hset(keys.coordinator(redis_prefix, name), mapping={"host": "h\r\x1b[2K", "seen": time.time() * 1000})
    client.close()
    result = cli("coordinators", "--redis", redis_url, "--prefix", redis_prefix)
    assert result.code == 0 and "coord\\n[DONE] fake\\x1b[31m" in result.out and "h\\r\\x1b[2K" in result.out
    assert_escaped(result.out)


def test_shown_ascii_only_leaves_nothing_but_printable_ascii() -> None:
    """What ``castor deadletters`` shows of a forger's values: homoglyphs, invisible and wide characters
    escaped, backslashes doubled (an escape on the screen is never text that looks like one)."""
    from castor.cli._escape import shown

    forged = "castor.tool.\u0441earch\u200b\x1b[2J\\x1b\u4e2d"
    assert shown(forged, ascii_only=True) == "castor.tool.\\u0441earch\\u200b\\x1b[2J\\\\x1b\\u4e2d"
    assert shown("castor.tool.search", ascii_only=True) == "castor.tool.search"
    assert shown(forged) == "castor.tool.\u0441earch\u200b\\x1b[2J\\x1b\u4e2d"  # stored names keep their letters
