"""The MCP gateway's cost per safe tool call, beside the same tool on the MCP SDK's plain server.

    python bench/mcp_gateway.py                 # 5 rounds of 300 calls each, print the table
    python bench/mcp_gateway.py --calls 1000 --repeat 7

Both servers run as stdio subprocesses of this script, driven by the MCP SDK's own client, one call at a
time: the plain server is ``mcp.server.lowlevel.Server`` serving ``add`` (this file, ``--serve-plain``);
the gateway is ``castor mcp --tool bench/mcp_gateway.py:add`` embedded (the run journaled in a SQLite file,
the CLI's default store) and, for the kernel alone, on ``memory://``. Each round times every server once,
in turn, after a warm-up, so a change in the machine's load hits all of them; the table shows the median
per call over the rounds and the gateway's difference to the plain server. Nothing here fails a build.
"""

from __future__ import annotations

import argparse
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


def serve_plain() -> None:
    """The baseline: the MCP SDK's low-level server with the same tool, over stdio."""
    import anyio
    import mcp_types as types
    from mcp.server.lowlevel import Server
    from mcp.server.stdio import stdio_server

    tool = types.Tool(name="add", description="Add two integers.", input_schema={
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]})

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[tool])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        arguments = params.arguments or {}
        value = await add(int(arguments["a"]), int(arguments["b"]))
        return types.CallToolResult(content=[types.TextContent(type="text", text=str(value))])

    server = Server("plain", on_list_tools=list_tools, on_call_tool=call_tool)

    async def main() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(main)


async def per_call(command: list[str], calls: int, warmup: int) -> float:
    """Seconds per ``add`` call through a stdio server started with ``command``."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    params = StdioServerParameters(command=command[0], args=command[1:], cwd=str(HERE.parent.parent))
    async with Client(params) as client:
        for i in range(warmup):
            await client.call_tool("add", {"a": i, "b": 1})
        started = time.perf_counter()
        for i in range(calls):
            result = await client.call_tool("add", {"a": i, "b": 1})
        elapsed = time.perf_counter() - started
    assert result.content[0].text == str(calls)  # type: ignore[union-attr]
    return elapsed / calls


def main() -> None:
    """Measure and print the table."""
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
        figures: dict[str, list[float]] = {name: [] for name in servers}
        for round_ in range(args.repeat):
            for name, command in servers.items():
                if "SQLite" in name:  # a fresh run each round: the journal does not grow across rounds
                    command = [*command[:-1], f"{tmp}/bench-{round_}.db"]
                figures[name].append(anyio.run(per_call, command, args.calls, args.warmup))
    base = statistics.median(figures["plain MCP SDK server"])
    print(f"safe tool call over stdio, {args.calls} calls x {args.repeat} rounds (median per call)")
    print(f"{'server':34} {'median':>10} {'range':>21} {'vs plain':>10}")
    for name, values in figures.items():
        med = statistics.median(values)
        spread = f"{min(values) * 1e6:.0f}-{max(values) * 1e6:.0f} us"
        delta = "" if name.startswith("plain") else f"{(med - base) * 1e6:+.0f} us"
        print(f"{name:34} {med * 1e6:>7.0f} us {spread:>21} {delta:>10}")


if __name__ == "__main__":
    main()
