"""The tools of the executor contract suite: the test process registers them for the local executor, and
the Celery workers import this file by path (so it imports nothing but castor and the standard library)."""

from __future__ import annotations

import asyncio
import socket
import time

from castor import castor_tool


def add(a: int, b: int) -> int:
    """A sync tool."""
    return a + b


async def greet(name: str) -> str:
    """An async tool that yields to its loop before it answers."""
    await asyncio.sleep(0)
    return f"hello {name}"


def explode(message: str) -> str:
    """A sync tool that raises."""
    raise ValueError(message)


async def aexplode(message: str) -> str:
    """An async tool that raises."""
    await asyncio.sleep(0)
    raise LookupError(message)


def describe(
    count: int, ratio: float, flag: bool, name: str, words: list[str], table: dict[str, int],
    nested: dict[str, list[dict[str, float]]], missing: str | None = None,
) -> dict[str, object]:
    """What it was given: each argument's value and the name of its type, as the tool saw them."""
    given = {"count": count, "ratio": ratio, "flag": flag, "name": name, "words": words, "table": table,
             "nested": nested, "missing": missing}
    return {"values": given, "types": {key: type(value).__name__ for key, value in given.items()}}


@castor_tool(timeout_seconds=1)
def dawdle(seconds: float) -> str:
    """A sync tool that works past its one-second deadline (the sleep stands for the work)."""
    time.sleep(seconds)
    return "done"


@castor_tool(timeout_seconds=1)
async def adawdle(seconds: float) -> str:
    """An async tool that works past its one-second deadline."""
    await asyncio.sleep(seconds)
    return "done"


@castor_tool(timeout_seconds=30)
def meet(port: int, me: int) -> int:
    """Report at the test's rendezvous on ``port`` and block until it lets everyone go: it answers with
    how many calls were there together, which only calls running at the same time can reach."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        conn.sendall(f"{me}\n".encode())
        return int(conn.makefile().readline())


TOOLS = [add, greet, explode, aexplode, describe, dawdle, adawdle, meet]
