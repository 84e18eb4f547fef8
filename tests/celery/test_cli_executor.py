"""``castor run / approve / resume --executor celery --config FILE``: the agent file that runs embedded
runs on the fleet unchanged. Its calls go to their pools, its run lives in the config's Redis (where the
workers journal), and the commands the CLI prints to decide it carry the same options."""

from __future__ import annotations

import asyncio
import shlex
import textwrap
import uuid
from pathlib import Path

import pytest

from castor.backends.redis import redis_backend
from castor.cli import main

from .conftest import Fleet

AGENT = """
import castor.lib as lib

async def agent():
    note = await lib.tool("write_note", name="{note}", content="secret")
    found = await lib.tool("search", query="{note}")
    gone = await lib.tool("delete_file", path="{path}")
    return [note["pool"], found["pool"], gone]
"""


def _castor(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def _stored(fleet: Fleet, pid: str) -> tuple[str, list[str]]:
    backend = redis_backend(fleet.settings.redis.url, prefix=fleet.prefix)
    try:
        cp = await backend.runs.load(pid)
        assert cp is not None, f"run {pid} is not in the config's Redis"
        return cp.status, [record.tool_name for record in await backend.journal.history(pid)]
    finally:
        await backend.close()


def test_a_run_on_the_fleet_is_decided_with_the_commands_it_prints(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    note, path = f"note-{uuid.uuid4().hex[:6]}", f"/tmp/gone-{uuid.uuid4().hex[:6]}"
    (tmp_path / "agent.py").write_text(textwrap.dedent(AGENT.format(note=note, path=path)))
    code, out, err = _castor(capsys, "run", "agent.py:agent", "--executor", "celery", "--config", str(fleet.config))
    assert code == 0, err
    approve = next(line.strip() for line in out.splitlines() if line.strip().startswith("castor approve "))
    assert f"--executor celery --config {fleet.config}" in approve
    pid = shlex.split(approve)[2]
    assert (fleet.count(note, "done"), fleet.count(path, "done")) == (1, 0)  # suspended before the delete
    assert asyncio.run(_stored(fleet, pid)) == ("SUSPENDED_FOR_HITL", ["write_note", "search"])

    code, out, err = _castor(capsys, *shlex.split(approve)[1:])
    assert code == 0, err
    assert "COMPLETED" in out and "['fs', 'web', 'deleted " in out  # each call ran on its own pool
    assert fleet.count(path, "done") == 1
    assert f"[{pid}:2#" in fleet.log("fs")  # the approved delete ran on the fs pool, not in the CLI
    assert asyncio.run(_stored(fleet, pid)) == ("COMPLETED", ["write_note", "search", "delete_file"])

    # Resumed once more, a finished run says so; nothing runs again.
    code, out, _ = _castor(capsys, "resume", pid, "--executor", "celery", "--config", str(fleet.config))
    assert code == 0 and "completed already" in out
    assert (fleet.count(note, "done"), fleet.count(path, "done")) == (1, 1)


def test_the_celery_executor_refuses_another_store_and_needs_a_config(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "agent.py").write_text(textwrap.dedent(AGENT.format(note="n", path="p")))
    code, _, err = _castor(capsys, "run", "agent.py:agent", "--executor", "celery", "--config", str(fleet.config),
                           "--db", "other.db")
    assert code != 0 and "keeps the run in the Redis of --config" in err and "--db" in err
    assert not (tmp_path / "other.db").exists()
    code, _, err = _castor(capsys, "run", "agent.py:agent", "--executor", "celery", "--config", "missing.toml")
    assert code != 0 and "missing.toml" in err and "does not exist" in err
