"""The gateway as operators run it: ``castor mcp`` in a process of its own, over stdio and over streamable
HTTP, driven by the MCP SDK's own client, and decided with ``castor approve`` / ``reject`` in another
process. The destructive tool appends a line to a file: the line count is how many times it ran."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from castor.registry import ToolRegistry
from tests.mcp.mcp_tools import add, append_line, lines
from tests.ports import free_port

pytestmark = pytest.mark.fleet
TOOLS = str(Path(__file__).with_name("mcp_tools.py"))
TOKEN = "test-token-0123456789abcdef"


def gateway_args(db: Path, *extra: str) -> list[str]:
    return [
        "-m", "castor", "mcp", "--tool", f"{TOOLS}:add", "--tool", f"{TOOLS}:append_line", "--destructive",
        "append_line", "--db", str(db), "--budget", "api=4", "--progress-every", "0.2", *extra,
    ]


def stdio(db: Path, log: Path, *extra: str) -> Client:
    # Started in the test's directory: no castor.toml of the repository is found and applied.
    params = StdioServerParameters(command=sys.executable, args=gateway_args(db, *extra),
                                   env={"MCP_TEST_LOG": str(log)}, cwd=str(db.parent))
    return Client(params)


async def castor(*args: str) -> str:
    """Run the castor CLI in another process; its output (fails the test on a non-zero exit)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "castor", *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode()


def text(result: Any) -> str:
    return "".join(part.text for part in result.content)


class Waiting:
    """A progress callback that tells when the gateway reports the call waiting for a human."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.messages: list[str] = []

    async def __call__(self, done: float, total: float | None, message: str | None) -> None:
        self.messages.append(str(message))
        self.event.set()

    async def wait(self) -> None:
        await asyncio.wait_for(self.event.wait(), 15)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "gateway.db", tmp_path / "appended.log"


async def test_stdio_tools_safe_call_budget_and_approval_from_the_cli(files: tuple[Path, Path]) -> None:
    db, log = files
    async with stdio(db, log, "--pid", "stdio-run") as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        castors = ToolRegistry([add, append_line], destructive=["append_line"])
        for name in ("add", "append_line"):  # the schema the kernel validates with, as the client receives it
            assert tools[name].input_schema == castors.get(name).schema.json_schema()
        assert tools["add"].input_schema["properties"]["b"]["type"] == "integer"
        assert tools["append_line"].annotations.destructive_hint is True
        assert text(await client.call_tool("add", {"a": 20, "b": 22})) == "42"
        bad = await client.call_tool("add", {"a": 1})
        assert bad.is_error and "b: Field required" in text(bad)
        waiting = Waiting()
        call = asyncio.create_task(client.call_tool("append_line", {"text": "approved"}, progress_callback=waiting))
        await waiting.wait()
        assert lines(log) == 0
        assert "Approved: stdio-run" in await castor("approve", "stdio-run", "--db", str(db), "--as", "bob")
        result = await call
        assert result.is_error is False and text(result) == "appended approved"
        assert lines(log) == 1
        waiting = Waiting()
        call = asyncio.create_task(client.call_tool("append_line", {"text": "refused"}, progress_callback=waiting))
        await waiting.wait()
        await castor("reject", "stdio-run", "--reason", "not this one", "--db", str(db))
        refused = await call
        assert refused.is_error and "rejected by a human: not this one" in text(refused)
        assert lines(log) == 1
        for _ in range(2):  # api=4: add, append and these two are charged; a call refused as invalid is not
            assert text(await client.call_tool("add", {"a": 1, "b": 1})) == "2"
        denied = await client.call_tool("add", {"a": 1, "b": 1})
        assert denied.is_error and "budget exhausted for 'api'" in text(denied) and "0 left" in text(denied)
    shown = await castor("inspect", "stdio-run", "--db", str(db))
    assert "approved by bob" in shown


async def test_stdio_restart_mid_wait_executes_the_decided_call_once(files: tuple[Path, Path]) -> None:
    db, log = files
    meta = {"castor/idempotency_key": "append-1"}
    async with stdio(db, log, "--pid", "restarted") as client:
        waiting = Waiting()
        call = asyncio.create_task(
            client.call_tool("append_line", {"text": "once"}, progress_callback=waiting, meta=meta)
        )
        await waiting.wait()
        call.cancel()  # the client gives up on the call; leaving the block stops the gateway's process
    await castor("approve", "restarted", "--db", str(db))  # decided while no gateway runs
    assert lines(log) == 0
    async with stdio(db, log, "--pid", "restarted") as client:  # the gateway again, the same session's run
        first = await client.call_tool("append_line", {"text": "once"}, meta=meta)
        second = await client.call_tool("append_line", {"text": "once"}, meta=meta)
    assert [text(first), text(second)] == ["appended once", "appended once"]
    assert lines(log) == 1


@contextmanager
def http_process(db: Path, log: Path, port: int, started: list[subprocess.Popen[bytes]] | None = None) -> Iterator[str]:
    """``castor mcp --transport http`` on ``port`` with the test token, until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, *gateway_args(db, "--transport", "http", "--port", str(port), "--token", TOKEN)],
        env={**os.environ, "MCP_TEST_LOG": str(log)}, stderr=subprocess.PIPE, cwd=str(db.parent),
    )
    if started is not None:
        started.append(proc)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "gateway exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the HTTP gateway never listened"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture
def http_gateway(files: tuple[Path, Path]) -> Iterator[str]:
    with http_process(*files, free_port()) as url:
        yield url


@asynccontextmanager
async def http_client(url: str, token: str) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


async def test_http_approve_and_reject_from_the_cli(http_gateway: str, files: tuple[Path, Path]) -> None:
    db, log = files
    meta = {"castor/run": "http-run"}
    async with http_client(http_gateway, TOKEN) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert tools["append_line"].annotations.destructive_hint is True
        bad = await client.call_tool("add", {"a": 1, "b": "two"}, meta=meta)
        assert bad.is_error and "b: Input should be a valid integer" in text(bad)
        safe = await client.call_tool("add", {"a": 1, "b": 2}, meta=meta)
        assert text(safe) == "3" and safe.meta is not None and safe.meta["castor/run"] == "http-run"
        waiting = Waiting()
        call = asyncio.create_task(
            client.call_tool("append_line", {"text": "yes"}, progress_callback=waiting, meta=meta)
        )
        await waiting.wait()
        await castor("approve", "http-run", "--db", str(db))
        assert text(await call) == "appended yes"
        waiting = Waiting()
        call = asyncio.create_task(
            client.call_tool("append_line", {"text": "no"}, progress_callback=waiting, meta=meta)
        )
        await waiting.wait()
        await castor("reject", "http-run", "--reason", "not on a Friday", "--db", str(db))
        rejected = await call
        assert rejected.is_error and "not on a Friday" in text(rejected)
        for _ in range(2):  # api=4: add, append and these two are charged; the rejected call is not
            assert text(await client.call_tool("add", {"a": 1, "b": 2}, meta=meta)) == "3"
        denied = await client.call_tool("add", {"a": 1, "b": 2}, meta=meta)
        assert denied.is_error and "budget exhausted for 'api'" in text(denied)
    assert log.read_text() == "yes\n"


async def test_http_refuses_a_wrong_or_missing_token(http_gateway: str) -> None:
    for token in ("wrong-token-0123456789abcdef", ""):
        async with httpx2.AsyncClient() as http:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            answer = await http.post(http_gateway, headers=headers, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert answer.status_code == 401
    with pytest.raises(Exception):  # noqa: B017 - the SDK's client fails the connection, whatever it calls it
        async with http_client(http_gateway, "wrong-token-0123456789abcdef") as client:
            await client.list_tools()


async def test_http_restart_mid_wait_executes_the_decided_call_once(files: tuple[Path, Path]) -> None:
    db, log = files
    port = free_port()
    meta = {"castor/run": "http-restarted", "castor/idempotency_key": "append-9"}
    started: list[subprocess.Popen[bytes]] = []
    said = ""
    with http_process(db, log, port, started) as url:
        client_gone = False
        try:
            async with http_client(url, TOKEN) as client:
                waiting = Waiting()
                call = asyncio.create_task(
                    client.call_tool("append_line", {"text": "once"}, progress_callback=waiting, meta=meta)
                )
                await waiting.wait()
                stopping = time.monotonic()
                started[0].terminate()  # the gateway stops while the client's call is open
                await asyncio.to_thread(started[0].wait, 15)
                assert time.monotonic() - stopping < 10, "an open call held the gateway's shutdown"
                said = started[0].stderr.read().decode() if started[0].stderr else ""
                with pytest.raises(Exception):  # noqa: B017 - the connection is gone, whatever the SDK calls it
                    await call
        except Exception:  # the client notices the gone server on leaving, too
            client_gone = True
        assert client_gone or call.done()
        # One line for the request it cut (it was a traceback of the cancelled request: it read as a crash).
        assert "Traceback" not in said and "a call it waited on stays waiting" in said, said
    await castor("approve", "http-restarted", "--db", str(db))  # decided while the gateway is down
    assert lines(log) == 0
    with http_process(db, log, port) as url:
        async with http_client(url, TOKEN) as client:
            first = await client.call_tool("append_line", {"text": "once"}, meta=meta)
            second = await client.call_tool("append_line", {"text": "once"}, meta=meta)
    assert [text(first), text(second)] == ["appended once", "appended once"]
    assert lines(log) == 1


def test_the_example_gateway_runs(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    notes = tmp_path / "notes.txt"

    def example() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "examples/mcp/client.py", "--db", str(tmp_path / "mcp.db"), "--approve-here"],
            cwd=root, env={**os.environ, "CASTOR_MCP_NOTES": str(notes)}, capture_output=True, text=True,
            timeout=60,
        )

    done = example()
    assert done.returncode == 0, done.stderr
    assert "append_line (destructive)" in done.stdout and "add(2, 3) -> 5" in done.stdout
    assert f"castor approve example-session --db {tmp_path / 'mcp.db'}" in done.stdout
    assert notes.read_text() == "hello from MCP\n"
    # Run again in the same session: the decided call is answered from the journal (it hung, waiting for
    # progress that never comes), and the line is not appended again.
    again = example()
    assert again.returncode == 0, again.stderr
    assert "answered from its journal" in again.stdout and "append_line -> appended" in again.stdout
    assert notes.read_text() == "hello from MCP\n"


async def test_a_stdio_connection_without_pid_is_one_run(files: tuple[Path, Path]) -> None:
    db, log = files
    async with stdio(db, log) as client:
        first = await client.call_tool("add", {"a": 1, "b": 1})
        second = await client.call_tool("add", {"a": 2, "b": 2})
    assert first.meta is not None and second.meta is not None
    assert first.meta["castor/run"] == second.meta["castor/run"] and first.meta["castor/run"].startswith("mcp-")
    assert (first.meta["castor/step"], second.meta["castor/step"]) == (0, 1)


def test_the_cli_loads_the_mcp_sdk_only_to_serve() -> None:
    code = (
        "import sys; from castor.cli import build_parser; build_parser(); import castor.mcp.cli, castor.mcp.gateway; "
        "bad = [m for m in ('mcp', 'mcp_types', 'uvicorn') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
