"""A sensitive value, nested in a call's arguments, appears in no output of ``castor run`` / ``approve`` /
``inspect`` and in no byte of the SQLite store; the tool still receives it, and the run resumes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from .conftest import Cli

MARK = "s3cr3t-marker-cli-93ab"

TOOLS = '''
import json
from pathlib import Path

from castor import castor_tool

LOG = Path(__file__).with_name("received.log")


@castor_tool(sensitive=["password"])
def login(user: str, creds: dict) -> str:
    with LOG.open("a") as log:
        log.write(json.dumps(creds) + "\\n")
    return "hello " + user


@castor_tool(destructive=True, sensitive=["token"])
def rotate(target: str, options: dict) -> str:
    with LOG.open("a") as log:
        log.write(json.dumps(options) + "\\n")
    return "rotated " + target
'''

AGENTS = f'''
from castor.lib import tool


async def secrets():
    await tool("login", user="ann", creds={{"password": "{MARK}"}})
    await tool("rotate", target="db", options={{"auth": [{{"token": "{MARK}"}}]}})
    return "done"
'''

RUN = ("run", "secret_agents.py:secrets", "--tool", "secret_tools.py:login", "--tool", "secret_tools.py:rotate")


def store_bytes(workdir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in workdir.glob("castor.db*") if not p.name.endswith(".key"))


def test_no_output_and_no_stored_byte_shows_a_sensitive_value(cli: Cli, workdir: Path) -> None:
    (workdir / "secret_tools.py").write_text(textwrap.dedent(TOOLS))
    (workdir / "secret_agents.py").write_text(textwrap.dedent(AGENTS))
    started = cli(*RUN)
    assert started.code == 0, started.err
    assert "Status: SUSPENDED_FOR_HITL" in started.out
    assert 'rotate(target="db", options={"auth": [{"token": "***"}]})' in started.out
    pid = started.pid
    shown = [started, cli("inspect", pid), cli("inspect", pid, "--json"), cli("ps")]
    for result in shown:
        assert result.code == 0, result.err
        assert MARK not in result.out + result.err
    data = json.loads(shown[2].out)
    assert data["syscall_log"][0]["request"]["arguments"]["creds"]["password"].startswith("***hmac:")
    assert MARK.encode() not in store_bytes(workdir)

    approved = cli("approve", pid, "--as", "alice")
    assert approved.code == 0, approved.err
    assert "Status: COMPLETED" in approved.out and "Result: done" in approved.out  # step 0 replayed by digest
    assert MARK not in approved.out + approved.err
    assert MARK not in cli("inspect", pid).out + cli("inspect", pid, "--json").out
    assert MARK.encode() not in store_bytes(workdir)
    received = [json.loads(line) for line in (workdir / "received.log").read_text().splitlines()]
    assert received == [{"password": MARK}, {"auth": [{"token": MARK}]}]
