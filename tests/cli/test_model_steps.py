"""``castor inspect`` prints model steps readably (model, question, answer, tool calls, tokens) and a stopped stream."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from castor import Castor
from castor.lib import complete, stream, tool
from castor.llm import Scripted
from tests.cli.conftest import Cli


async def search(query: str) -> list[str]:
    return [query]


async def agent() -> str:
    first = await complete(prompt="find old logs", system="be brief",
                           tools=[{"name": "search", "parameters": {"type": "object"}}])
    for call in first.tool_calls:
        await tool(call.name, **call.arguments)
    return (await complete(prompt="summarise")).text


def test_inspect_shows_model_steps(cli: Cli, workdir: Path) -> None:
    model = Scripted([{"tool_calls": [{"name": "search", "arguments": {"query": "logs"}}]}, "all clean"])
    kernel = Castor(tools=[search], llm=model, store=f"sqlite:///{workdir / 'castor.db'}")
    asyncio.run(kernel.run(agent, pid="llm-run"))
    out = cli("inspect", "llm-run").out
    lines = out.splitlines()
    first = next(line for line in lines if line.startswith("  [0]"))
    assert first.startswith('  [0] model scripted: user: "find old logs" (+1 earlier messages; tools: search) -> ""')
    assert 'calls search({"query": "logs"}) [tool_calls] (tokens in ' in first
    assert "charged input_tokens=" in first
    last = next(line for line in lines if line.startswith("  [2]"))
    assert last.startswith('  [2] model scripted: user: "summarise" -> "all clean" (tokens in ')


class Stops:
    model = "stops"

    async def complete(self, request: dict[str, object]) -> None:
        raise AssertionError("streamed only")

    async def stream(self, request: dict[str, object]):  # type: ignore[no-untyped-def]
        yield "the first half"
        raise ConnectionError("cut")


async def reader() -> str:
    return "".join([chunk async for chunk in stream(prompt="go")])


def test_inspect_shows_a_broken_streams_partial_text(cli: Cli, workdir: Path) -> None:
    kernel = Castor(llm=Stops(), store=f"sqlite:///{workdir / 'castor.db'}")
    with contextlib.suppress(ConnectionError):
        asyncio.run(kernel.run(reader, pid="cut-run"))
    out = cli("inspect", "cut-run").out
    assert "Partial: the first half" in out
    assert "step 0: model:stops: ConnectionError: cut (partial text: 'the first half')" in out
