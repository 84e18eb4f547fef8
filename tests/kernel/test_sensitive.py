"""Sensitive arguments, at any depth, never reach a store in clear: the journal keeps keyed digests (replay
still compares them), a pending call keeps them encrypted (an approval in another kernel still executes
the real value), failure records show ``***``."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from castor import Castor, ReplayDivergenceError, castor_tool
from castor.fleet.records import redact
from castor.lib import tool

MARK = "s3cr3t-marker-7f1c"
RECEIVED: list[Any] = []


@castor_tool(sensitive=["password"])
async def login(user: str, creds: dict) -> str:
    RECEIVED.append(creds)
    return f"hello {user}"


@castor_tool(destructive=True, sensitive=["token"])
async def rotate(target: str, options: dict) -> str:
    RECEIVED.append(options)
    return f"rotated {target}"


def agent_with(secret: str) -> Any:
    async def agent() -> str:
        await tool("login", user="ann", creds={"password": secret, "realm": "corp"})
        await tool("rotate", target="db", options={"auth": [{"token": secret}], "dry": False})
        return "done"

    return agent


def test_redact_hides_a_sensitive_name_at_any_depth() -> None:
    arguments = {"user": "ann", "creds": {"password": MARK, "realm": "corp"}, "list": [{"password": MARK}, 3]}
    assert redact(arguments, {"password"}) == {
        "user": "ann", "creds": {"password": "***", "realm": "corp"}, "list": [{"password": "***"}, 3]
    }


async def test_a_failure_record_hides_a_nested_sensitive_value(store: str | None) -> None:
    @castor_tool(sensitive=["password"])
    async def broken(config: dict) -> str:
        raise PermissionError("denied")

    async def agent() -> object:
        return await tool("broken", config={"db": {"password": MARK}})

    kernel = Castor(tools=[broken], store=store)
    with pytest.raises(PermissionError):
        await kernel.run(agent, pid="nested-fail")
    [failure] = await kernel.backend.journal.failures("nested-fail")
    assert failure.arguments == {"config": {"db": {"password": "***"}}}
    await kernel.close()


async def test_journal_and_pending_call_hold_no_clear_value_and_approval_still_runs_it(store: str | None) -> None:
    RECEIVED.clear()
    kernel = Castor(tools=[login, rotate], store=store)
    cp = await kernel.run(agent_with(MARK), pid="sealed")
    assert cp.status == "SUSPENDED_FOR_HITL"
    assert MARK not in cp.model_dump_json()  # the checkpoint, pending call included
    stored = await kernel.aload("sealed")
    assert MARK not in stored.model_dump_json()
    assert stored.syscall_log[0].arguments["creds"]["password"].startswith("***hmac:")
    [pending] = await kernel.backend.approvals.pending()
    assert MARK not in repr(pending) and pending.arguments["options"]["auth"][0]["token"].startswith("***aead:")

    # Another kernel on the same store (another process, for SQLite and Redis) approves and executes the call.
    other = Castor(tools=[login, rotate], store=store) if store else kernel
    await other.approve("sealed", by="alice")
    cp = await other.run(agent_with(MARK), checkpoint=await other.aload("sealed"))
    assert cp.status == "COMPLETED" and cp.result == "done"  # step 0 replayed: its digest matched
    assert RECEIVED == [{"password": MARK, "realm": "corp"}, {"auth": [{"token": MARK}], "dry": False}]
    assert MARK not in (await other.aload("sealed")).model_dump_json()
    if other is not kernel:
        await other.close()
    await kernel.close()


async def test_replay_notices_a_changed_sensitive_value(store: str | None) -> None:
    kernel = Castor(tools=[login, rotate], store=store)
    cp = await kernel.run(agent_with(MARK), pid="diverge")
    with pytest.raises(ReplayDivergenceError, match=r"\*\*\*hmac:") as caught:
        await kernel.run(agent_with("another-secret"), checkpoint=cp)
    assert MARK not in str(caught.value) and "another-secret" not in str(caught.value)
    await kernel.close()


async def test_a_sqlite_store_keeps_its_key_in_a_private_file(tmp_path: Path) -> None:
    kernel = Castor(tools=[login, rotate], store=f"sqlite:///{tmp_path}/castor.db")
    await kernel.run(agent_with(MARK), pid="keyed")
    await kernel.close()
    key = tmp_path / "castor.db.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    for name in ("castor.db", "castor.db-wal"):
        path = tmp_path / name
        assert not path.exists() or MARK.encode() not in path.read_bytes(), name


async def test_a_checkpoint_json_resumes_on_a_store_with_another_key(tmp_path: Path) -> None:
    RECEIVED.clear()
    first = Castor(tools=[login, rotate], store=f"sqlite:///{tmp_path}/castor.db")
    cp = await first.run(agent_with(MARK), pid="moved")
    await first.close()
    text = cp.model_dump_json()
    assert MARK not in text
    # Another process, the memory store: its key cannot check step 0's digest, the rest of the call it can.
    fresh = Castor(tools=[login, rotate])
    cp = await fresh.run(agent_with(MARK), checkpoint=type(cp).model_validate_json(text))
    assert cp.status == "SUSPENDED_FOR_HITL" and len(RECEIVED) == 1  # step 0 replayed, not run again
    await fresh.approve(cp)
    cp = await fresh.run(agent_with(MARK), checkpoint=cp)
    assert cp.status == "COMPLETED" and RECEIVED[-1] == {"auth": [{"token": MARK}], "dry": False}

    async def changed() -> str:
        await tool("login", user="bob", creds={"password": MARK, "realm": "corp"})
        return "never"

    with pytest.raises(ReplayDivergenceError):
        await Castor(tools=[login, rotate]).run(changed, checkpoint=type(cp).model_validate_json(text))
