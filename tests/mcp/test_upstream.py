"""Another MCP server's tools as Castor tools (``castor.mcp.upstream``), against a real server process
(``upstream_server.py``, over stdio): registered with their schemas and the server's annotations, gated,
journaled and replayed without calling the server again; its errors, a server that cannot be reached and
one that dies between calls each say what happened in one line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

import castor.lib as lib
from castor import Castor
from castor.errors import ConfigError
from castor.frameworks._common import UnsupportedToolError
from castor.mcp.upstream import McpServer, McpToolError

SERVER = Path(__file__).with_name("upstream_server.py")


def server(log: Path, **options: object) -> McpServer:
    return McpServer.stdio(sys.executable, str(SERVER), str(log), exclude=options.pop("exclude", ["mixed"]),
                           **options)  # type: ignore[arg-type]


def ran(log: Path, tool: str | None = None) -> list[dict[str, object]]:
    """What the server ran (of ``tool``), in order."""
    if not log.exists():
        return []
    rows = [line.split(" ", 2) for line in log.read_text().splitlines()]
    return [json.loads(args) for _, name, args in rows if tool is None or name == tool]


async def finished_elsewhere(tools: list[Any], db: str, pid: str, agent: Any, log: Path) -> Any:
    """Approve run ``pid``'s waiting call from another kernel on ``db`` (``castor approve`` in another process)
    and resume the run there; its end, once checked that the server deleted once and searched once."""
    other = Castor(tools=tools, store=db)
    await other.approve(await other.aload(pid))
    done = await other.run(agent, checkpoint=await other.aload(pid))
    assert ran(log, "delete_file") == [{"path": "/data/old-0.log"}] and len(ran(log, "search")) == 1
    return done


async def cleanup() -> list[object]:
    found = await lib.tool("search", query="old")
    gone = await lib.tool("delete_file", path=found[0])
    kept = await lib.tool("note", text="done")
    return [found, gone, kept]


def test_each_tool_is_registered_with_its_schema_and_the_servers_annotations(tmp_path: Path) -> None:
    kernel = Castor(tools=[server(tmp_path / "log")])
    specs = {spec.name: spec for spec in kernel.tools}
    assert list(specs) == ["search", "delete_file", "rotate", "note", "pick", "fail", "whoami", "vanish", "glance"]
    assert (specs["search"].destructive, specs["search"].idempotent) == (False, True)  # readOnlyHint
    assert specs["delete_file"].destructive and not specs["delete_file"].idempotent  # destructiveHint
    assert specs["rotate"].destructive  # no annotations: the specification's default
    assert not specs["note"].destructive  # destructiveHint false
    schema = specs["search"].input_schema
    assert schema["required"] == ["query"] and schema["properties"]["limit"]["default"] == 2
    assert specs["search"].func.__doc__ == "Find files whose name holds the query."
    assert ran(tmp_path / "log") == []  # listing runs nothing


def test_the_operators_destructive_list_replaces_the_servers_claims(tmp_path: Path) -> None:
    kernel = Castor(tools=[server(tmp_path / "log", destructive=["search"], prefix="files_")])
    gated = {spec.name for spec in kernel.tools if spec.destructive}
    assert gated == {"files_search"}


async def test_a_run_suspends_at_the_destructive_call_and_its_approval_runs_it_once(tmp_path: Path) -> None:
    log, db = tmp_path / "log", f"sqlite:///{tmp_path / 'castor.db'}"
    kernel = Castor(tools=[server(log)], store=db)
    waiting = await kernel.run(cleanup, pid="mcp-run")
    assert waiting.status == "SUSPENDED_FOR_HITL" and waiting.pending_tool == "delete_file"
    assert ran(log, "search") == [{"query": "old", "limit": 2}] and ran(log, "delete_file") == []

    other = Castor(tools=[server(log)], store=db)  # another kernel on the same store, as `castor approve` is
    assert other.tools.get("search").func is kernel.tools.get("search").func  # the server listed once per process
    await other.approve(await other.aload("mcp-run"))
    done = await other.run(cleanup, checkpoint=await other.aload("mcp-run"))
    assert done.status == "COMPLETED"
    assert done.result == [["/data/old-0.log", "/data/old-1.log"], "deleted /data/old-0.log", "note: done"]
    assert ran(log, "delete_file") == [{"path": "/data/old-0.log"}]
    assert len(ran(log, "search")) == 1  # replayed from the journal, not asked again

    fork = await other.run(cleanup, checkpoint=done.fork(at_step=3))
    assert fork.status == "COMPLETED" and fork.result == done.result
    assert len(ran(log)) == 3  # the fork replayed every step: the server ran nothing more


async def test_arguments_are_checked_before_the_server_is_asked(tmp_path: Path) -> None:
    log = tmp_path / "log"
    kernel = Castor(tools=[server(log)], structured_results=True)

    async def agent() -> list[object]:
        bad = await lib.tool("search", query=3)
        unknown = await lib.tool("pick", choice="burn")
        optional = await lib.tool("note", text="hi", tag=None)
        tagged = await lib.tool("note", text="hi", tag="t")
        return [bad.status, unknown.status, optional.value, tagged.value]

    done = await kernel.run(agent)
    assert done.result == ["VALIDATION_ERROR", "VALIDATION_ERROR", "note: hi", "t: hi"], done.result
    assert [row["tag"] for row in ran(log)] == [None, "t"]  # the two refused calls never reached the server


async def test_a_call_the_server_answers_with_an_error_raises_its_text_in_the_agent(tmp_path: Path) -> None:
    log = tmp_path / "log"
    kernel = Castor(tools=[server(log)])

    async def agent() -> str:
        try:
            await lib.tool("fail", reason="disk is read-only")
        except McpToolError as exc:
            return str(exc)
        return "no error"

    done = await kernel.run(agent)
    assert done.result.startswith("MCP tool 'fail' failed: ") and done.result.endswith("disk is read-only")
    assert ran(log, "fail") == [{"reason": "disk is read-only"}]


async def test_a_server_that_died_between_calls_is_started_again(tmp_path: Path) -> None:
    log = tmp_path / "log"
    kernel = Castor(tools=[server(log)])

    async def agent() -> list[int]:
        first = await lib.tool("whoami")
        os.kill(first, signal.SIGKILL)
        await asyncio.sleep(0.5)  # the session sees its server gone
        return [first, await lib.tool("whoami")]  # the idle session is checked first: a new server answers

    done = await kernel.run(agent)
    first, second = done.result
    assert second != first and ran(log, "whoami") == [{}, {}]


async def test_a_server_that_dies_during_a_call_puts_the_step_in_doubt_for_a_human(tmp_path: Path) -> None:
    """Whether the call ran there is unknown: a tool that may not run twice goes to a human (in doubt, as a
    call whose worker was lost), whose approval runs it again on a new server; a read-only one fails as a
    plain error the agent may retry."""
    log, db = tmp_path / "log", f"sqlite:///{tmp_path / 'castor.db'}"
    kernel = Castor(tools=[server(log)], store=db)

    async def agent() -> list[object]:
        try:
            await lib.tool("glance")
        except McpToolError as exc:
            seen = [str(exc), await lib.tool("glance")]
        return [*seen, await lib.tool("vanish")]

    waiting = await kernel.run(agent, pid="doubt")
    assert waiting.status == "SUSPENDED_FOR_HITL" and waiting.pending_tool == "vanish", waiting.error
    assert "in doubt" in (waiting.pending_reason or ""), waiting.pending_reason
    [failure] = [f for f in waiting.failures if f.tool_name == "vanish"]
    assert failure.error_type == "McpCallInDoubt" and "whether the call ran there is unknown" in failure.message
    await kernel.approve(waiting)
    done = await kernel.run(agent, checkpoint=waiting)
    said, seen, back = done.result
    assert "closed its connection during the call" in said and said.endswith("it may be called again")
    assert (seen, back) == ("seen", "back") and len(ran(log, "vanish")) == 2 and len(ran(log, "glance")) == 2


def test_a_server_that_cannot_be_started_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^cannot reach MCP server 'nothing-here': ") as refused:
        Castor(tools=[McpServer.stdio(str(tmp_path / "nothing-here"))])
    assert "\n" not in str(refused.value)


def test_a_tool_castor_cannot_check_is_refused_by_name_and_can_be_left_out(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedToolError, match=r"MCP server 'upstream_server' tool 'mixed' cannot be guarded: "
                                                  r"argument 'value' uses 'anyOf'.*exclude=\[\.\.\.\]"):
        Castor(tools=[server(tmp_path / "log", exclude=[])])


def test_options_naming_tools_the_server_lacks_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"destructive names tools it does not have: serach \(it has "):
        Castor(tools=[server(tmp_path / "log", destructive=["serach"])])
    with pytest.raises(ConfigError, match="McpServer has no option 'exlude'"):
        McpServer.stdio("x", exlude=["a"])
    with pytest.raises(ConfigError, match="takes a list of tool names, not the string 'search'"):
        McpServer.stdio("x", only="search")
    with pytest.raises(ConfigError, match="is not an http"):
        McpServer.http("localhost:9000")


async def test_the_gateway_serves_another_servers_tools_with_its_calls_behind_a_human(tmp_path: Path) -> None:
    """``castor mcp --tool upstream_tools.py:files``: an MCP client reaches the other server only through
    Castor, its destructive call waiting for a human and run once when approved."""
    from mcp import Client

    from castor.backends import open_backend
    from castor.mcp.gateway import Gateway
    from castor.mcp.server import build_server
    from castor.mcp.session import Options
    from tests.mcp.test_gateway import decide_when_waiting, text

    log, db = tmp_path / "log", f"sqlite:///{tmp_path / 'gateway.db'}"
    kernel = Castor(tools=[server(log)], store=db, structured_results=True)
    gateway = Gateway(kernel, Options(approval_timeout=10.0, progress_every=0.05), default_pid="proxy")
    operator = open_backend(db)
    try:
        async with Client(build_server(gateway)) as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert tools["delete_file"].annotations.destructive_hint is True
            assert not tools["search"].annotations.destructive_hint
            found = await client.call_tool("search", {"query": "old"})
            call = asyncio.create_task(client.call_tool("delete_file", {"path": "/data/old-0.log"}))
            await decide_when_waiting(operator, "proxy", "approve")
            deleted = await call
    finally:
        await gateway.close()  # its sessions' drives, else left pending for the collector
        await operator.close()
    assert "/data/old-1.log" in text(found) and "deleted /data/old-0.log" in text(deleted)
    assert ran(log, "delete_file") == [{"path": "/data/old-0.log"}]


def test_the_cli_takes_a_server_where_it_takes_a_tool(tmp_path: Path) -> None:
    """``castor run ... --tool upstream_tools.py:files``, then ``castor approve`` in another process."""
    import subprocess

    tools = Path(__file__).with_name("upstream_tools.py")
    (tmp_path / "agent.py").write_text(
        "import castor.lib as lib\n\n\nasync def cleanup():\n"
        "    found = await lib.tool('search', query='old')\n"
        "    return await lib.tool('delete_file', path=found[0])\n"
    )
    env = {**os.environ, "UPSTREAM_LOG": str(tmp_path / "log")}
    env.pop("CASTOR_STORE", None)

    def castor(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "castor", *args, "--db", str(tmp_path / "castor.db")],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)

    started = castor("run", "agent.py:cleanup", "--tool", f"{tools}:files", "--pid", "cli-mcp")
    assert started.returncode == 0 and "SUSPENDED_FOR_HITL" in started.stdout, started.stdout + started.stderr
    assert "delete_file" in castor("approvals").stdout
    approved = castor("approve", "cli-mcp")
    assert approved.returncode == 0 and "COMPLETED" in approved.stdout, approved.stdout + approved.stderr
    assert ran(tmp_path / "log", "delete_file") == [{"path": "/data/old-0.log"}]
    assert len(ran(tmp_path / "log", "search")) == 1


async def test_a_server_over_streamable_http_is_taken_the_same_way(tmp_path: Path) -> None:
    import subprocess
    import time

    from tests.mcp.test_processes import free_port

    log, port = tmp_path / "log", free_port()
    proc = subprocess.Popen([sys.executable, str(SERVER), str(log), "--http", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        files = McpServer.http(url, headers={"Authorization": "Bearer not-shown"}, exclude=["mixed"])
        assert "not-shown" not in repr(files) and str(files) == "MCP server '127.0.0.1'"
        deadline = time.monotonic() + 20
        while True:  # the server imports for a second or two before it listens
            try:
                kernel = Castor(tools=[files])
                break
            except ConfigError:
                assert time.monotonic() < deadline and proc.poll() is None, "the HTTP server never answered"
                await asyncio.sleep(0.3)  # a failed connection is not kept: the next listing connects anew
        waiting = await kernel.run(cleanup)
        assert waiting.status == "SUSPENDED_FOR_HITL" and ran(log, "search") == [{"query": "old", "limit": 2}]
    finally:
        proc.terminate()
        proc.wait(10)


FORKED = '''
import asyncio, os, sys, threading, time
import castor.lib as lib
from castor import Castor
from castor.mcp import upstream
from castor.mcp.upstream import McpServer

server = McpServer.stdio(sys.executable, sys.argv[1], sys.argv[2], exclude=["mixed"])
Castor(tools=[server])  # the parent lists the server: its link's thread runs from here on
held = threading.Event()

def hold():  # another thread of the parent is listing at the moment of the fork
    with upstream._LISTING:
        held.set()
        time.sleep(30)

threading.Thread(target=hold, daemon=True).start()
held.wait()
child = os.fork()
if child == 0:
    async def agent():
        return await lib.tool("search", query="old")
    cp = asyncio.run(Castor(tools=[server]).run(agent))
    print("child:", cp.status, cp.result, flush=True)
    os._exit(0)
_, status = os.waitpid(child, 0)
print("child exit", os.waitstatus_to_exitcode(status), flush=True)
os._exit(0)
'''


def test_a_forked_child_opens_its_own_link_whatever_the_parents_threads_held(tmp_path: Path) -> None:
    """A prefork pool forks its workers after listing the server's tools: the parent's link (its thread gone
    in the child) is not used there, and a lock a thread of the parent held at the fork does not hang the
    child (it did: the child waited forever for ``_LISTING``)."""
    import subprocess

    script = tmp_path / "forked.py"
    script.write_text(FORKED)
    log = tmp_path / "calls.log"
    proc = subprocess.Popen([sys.executable, str(script), str(SERVER), str(log)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the parent, its hung child and their servers
        out, err = proc.communicate()
        pytest.fail(f"the forked child hung: {out}{err}")
    assert "child: COMPLETED ['/data/old-0.log'" in out, (out, err)
    assert "child exit 0" in out
    assert [call["query"] for call in ran(log, "search")] == ["old"]  # the child's call, once
