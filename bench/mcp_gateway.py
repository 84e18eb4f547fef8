"""The MCP gateway's cost per safe tool call, beside the same tool on the MCP SDK's plain server.

    python bench/mcp_gateway.py                 # 5 rounds of 300 calls each, print the table
    python bench/mcp_gateway.py --calls 1000 --repeat 7

Both servers run as stdio subprocesses of this script, driven by the MCP SDK's own client, one call at a
time: the plain server is ``mcp.server.lowlevel.Server`` serving ``add`` (this file, ``--serve-plain``);
the gateway is ``castor mcp --tool bench/mcp_gateway.py:add`` embedded (the run journaled in a SQLite file,
the CLI's default store) and, for the kernel alone, on ``memory://``. Each round times every server once,
in turn, after a warm-up, so a change in the machine's load hits all of them; the table shows the median
per call over the rounds (wall clock seen by the client, and CPU time of the server process, which a busy
machine distorts less) and the gateway's difference to the plain server. Linux only (it reads /proc).
Nothing here fails a build.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


async def add(a: int, b: int) -> int:
    """Add two integers (``async``: Castor runs a sync tool in a thread pool, and a thread's round trip
    would be measured, not the gateway)."""
    return a + b


def plain_server() -> Any:
    """The baseline: the MCP SDK's low-level server with the same tool."""
    import mcp_types as types
    from mcp.server.lowlevel import Server

    tool = types.Tool(name="add", description="Add two integers.", input_schema={
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]})

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[tool])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        arguments = params.arguments or {}
        value = await add(int(arguments["a"]), int(arguments["b"]))
        return types.CallToolResult(content=[types.TextContent(type="text", text=str(value))])

    return Server("plain", on_list_tools=list_tools, on_call_tool=call_tool)


def serve_plain() -> None:
    """The baseline over stdio (``--serve-plain``)."""
    import anyio
    from mcp.server.stdio import stdio_server

    server = plain_server()

    async def main() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(main)


def children() -> set[int]:
    """This process's child processes (Linux: /proc)."""
    found: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        found.update(int(pid) for pid in (task / "children").read_text().split())
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def per_call(command: list[str], calls: int, warmup: int) -> tuple[float, float]:
    """Wall-clock seconds per ``add`` call through a stdio server started with ``command``, and the CPU
    seconds the server process spent per call (what a loaded machine does not distort)."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    # Started in an empty directory: no castor.toml is found (its budgets would apply to the gateway).
    params = StdioServerParameters(command=command[0], args=command[1:], cwd=tempfile.gettempdir())
    before = children()
    async with Client(params) as client:
        (server,) = children() - before
        for i in range(warmup):
            await client.call_tool("add", {"a": i, "b": 1})
        started, cpu = time.perf_counter(), cpu_seconds(server)
        for i in range(calls):
            result = await client.call_tool("add", {"a": i, "b": 1})
        elapsed, cpu = time.perf_counter() - started, cpu_seconds(server) - cpu
    assert result.content[0].text == str(calls), result  # type: ignore[union-attr]  # every call was answered
    return elapsed / calls, cpu / calls


async def in_process(server: Any, calls: int, warmup: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds per call with the client in this process (no pipes, no second process)."""
    from mcp import Client

    async with Client(server) as client:
        for i in range(warmup):
            await client.call_tool("add", {"a": i, "b": 1})
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(calls):
            await client.call_tool("add", {"a": i, "b": 1})
        return (time.perf_counter() - started) / calls, (time.process_time() - cpu) / calls


def gateway_server(store: str) -> Any:
    """``castor mcp``'s server over ``add``, on ``store``, built in this process."""
    from castor.kernel import Castor
    from castor.mcp.gateway import Gateway
    from castor.mcp.server import build_server
    from castor.mcp.session import Options

    kernel = Castor(tools=[add], store=store, structured_results=True)
    return build_server(Gateway(kernel, Options(), default_pid=f"bench-{time.monotonic_ns()}"))


def table(title: str, calls: int, repeat: int, wall: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
    """Print medians and differences to the first row."""
    print(f"{title}, {calls} calls x {repeat} rounds, medians per call")
    print(f"{'server':32} {'wall':>9} {'vs plain':>9} {'CPU':>11} {'vs plain':>9}")
    plain = next(iter(wall))
    for name in wall:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        dw = "" if name == plain else f"{(w - statistics.median(wall[plain])) * 1e6:+.0f} us"
        dc = "" if name == plain else f"{(c - statistics.median(cpu[plain])) * 1e6:+.0f} us"
        print(f"{name:32} {w * 1e6:>6.0f} us {dw:>9} {c * 1e6:>8.0f} us {dc:>9}")


def main() -> None:
    """Measure and print the tables."""
    import anyio

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--serve-plain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_plain:
        serve_plain()
        return
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        gateway = [py, "-m", "castor", "mcp", "--tool", f"{HERE}:add"]
        servers = {
            "plain MCP SDK server": [py, str(HERE), "--serve-plain"],
            "castor mcp, SQLite (embedded)": [*gateway, "--db", f"{tmp}/bench.db"],
            "castor mcp, memory://": [*gateway, "--store", "memory://"],
        }
        wall: dict[str, list[float]] = {name: [] for name in servers}
        cpu: dict[str, list[float]] = {name: [] for name in servers}
        for round_ in range(args.repeat):
            for name, command in servers.items():
                if "SQLite" in name:  # a fresh run each round: the journal does not grow across rounds
                    command = [*command[:-1], f"{tmp}/bench-{round_}.db"]
                seconds, used = anyio.run(per_call, command, args.calls, args.warmup)
                wall[name].append(seconds)
                cpu[name].append(used)
    table("safe tool call over stdio (CPU: the server process's)", args.calls, args.repeat, wall, cpu)
    with tempfile.TemporaryDirectory() as tmp:
        makers = {
            "plain MCP SDK server": plain_server,
            "castor gateway, SQLite": lambda: gateway_server(f"sqlite:///{tmp}/inproc-{time.monotonic_ns()}.db"),
            "castor gateway, memory://": lambda: gateway_server("memory://"),
        }
        wall = {name: [] for name in makers}
        cpu = {name: [] for name in makers}
        for _ in range(args.repeat):
            for name, make in makers.items():
                seconds, used = anyio.run(in_process, make(), args.calls * 3, args.warmup)
                wall[name].append(seconds)
                cpu[name].append(used)
    print()
    table("the same, client and server in one process (CPU: both)", args.calls * 3, args.repeat, wall, cpu)


if __name__ == "__main__":
    main()
