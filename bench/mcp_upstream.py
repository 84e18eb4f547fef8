"""What Castor adds to a call of another MCP server's tool (``castor.mcp.upstream``), beside the MCP SDK's
own client calling the same server.

    python bench/mcp_upstream.py                 # 5 rounds of 300 calls each, print the table
    python bench/mcp_upstream.py --calls 1000 --repeat 7

One server process (``tests/mcp/upstream_server.py`` over stdio, its calls logged to /dev/null), called
one call at a time with ``search``: by the SDK's ``Client`` directly (the baseline), by an agent through
``Castor(tools=[McpServer...])`` embedded on the memory store (the syscall path, the session's thread hop,
the result's conversion), and the same agent's run replayed from its journal (the server not called).
Each round times every way once, in turn, after a warm-up; the table shows the median per call over the
rounds and Castor's difference to the baseline. Nothing here fails a build.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tests" / "mcp" / "upstream_server.py"
sys.path.insert(0, str(ROOT))


async def direct(calls: int) -> float:
    """Seconds per call of the SDK's client, on a session opened before the clock starts."""
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=sys.executable, args=[str(SERVER), os.devnull, "--plain"])
    async with Client(params) as client:
        await client.call_tool("search", {"query": "warm"})
        start = time.perf_counter()
        for i in range(calls):
            await client.call_tool("search", {"query": f"q{i}"})
        return (time.perf_counter() - start) / calls


async def through_castor(calls: int) -> tuple[float, float]:
    """Seconds per call through Castor (a live run), and per step of the same run replayed."""
    import castor.lib as lib
    from castor import Castor
    from castor.mcp.upstream import McpServer

    files = McpServer.stdio(sys.executable, str(SERVER), os.devnull, "--plain")
    kernel = Castor(tools=[files])

    async def agent() -> int:
        for i in range(calls):
            await lib.tool("search", query=f"q{i}")
        return calls

    await kernel.run(agent)  # warm-up: the session is open, the path's caches filled
    start = time.perf_counter()
    done = await kernel.run(agent)
    live = (time.perf_counter() - start) / calls
    start = time.perf_counter()
    await kernel.run(agent, checkpoint=done.fork(at_step=calls))
    replayed = (time.perf_counter() - start) / calls
    return live, replayed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per round (default 300)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (default 5)")
    args = parser.parse_args()
    rows: dict[str, list[float]] = {"sdk client": [], "castor": [], "castor replay": []}
    for round_ in range(args.repeat):
        rows["sdk client"].append(asyncio.run(direct(args.calls)))
        live, replayed = asyncio.run(through_castor(args.calls))
        rows["castor"].append(live)
        rows["castor replay"].append(replayed)
        print(f"round {round_ + 1}/{args.repeat} done", file=sys.stderr)
    base = statistics.median(rows["sdk client"])
    print(f"{'':16} {'µs/call (median)':>18} {'vs sdk client':>16}")
    for name, values in rows.items():
        median = statistics.median(values)
        print(f"{name:16} {median * 1e6:18.0f} {(median - base) * 1e6:+15.0f}µs")
    print(f"\n{args.repeat} rounds of {args.calls} calls; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
