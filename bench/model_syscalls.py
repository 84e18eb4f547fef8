"""What Castor's two syscalls of a framework step cost by themselves: ``model_call`` and ``tool``.

    python bench/model_syscalls.py            # 20 steps, median of 31 runs

An agent does what a guarded framework agent asks of Castor and nothing else: a model call whose request
is the whole conversation so far (it grows by two messages a step, to 41), then the tool call the model
asked for; the model answers at once and reports its usage. Printed: CPU time per step with the request
walked and copied at every step (``model_call``'s default) and with ``canonical=True`` (each message
built once and shared by every later request, as the framework guards do).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from castor import Castor
from castor.lib import model_call, tool


async def search(query: str) -> str:
    """The one tool: answers at once."""
    return f"found {query}"


def agent_of(steps: int, canonical: bool) -> Callable[[], Awaitable[str]]:
    """An agent of ``steps`` model calls and tool calls over a growing conversation."""
    async def agent() -> str:
        messages: list[dict[str, Any]] = [{"role": "user", "content": "search"}]
        for n in range(steps):
            async def model(_request: dict[str, Any], n: int = n) -> dict[str, Any]:
                call = {"id": f"c{n}", "name": "search", "arguments": {"query": f"q{n}"}}
                return {"text": "", "tool_calls": [call], "usage": {"input_tokens": 10, "output_tokens": 5}}

            answer = await model_call({"messages": messages}, model="scripted", invoke=model, canonical=canonical)
            found = await tool("search", query=f"q{n}")
            messages = [*messages, {"role": "ai", "tool_calls": answer["tool_calls"]},
                        {"role": "tool", "content": found}]
        return "done"

    return agent


async def measure(steps: int, repeat: int, canonical: bool) -> float:
    """Median CPU seconds per step."""
    kernel = Castor(tools=[search])
    agent = agent_of(steps, canonical)
    for _ in range(3):
        await kernel.run(agent)
    times = []
    for _ in range(repeat):
        started = time.process_time()
        await kernel.run(agent)
        times.append(time.process_time() - started)
    return statistics.median(times) / steps


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=31)
    args = parser.parse_args()
    for canonical in (False, True):
        per_step = asyncio.run(measure(args.steps, args.repeat, canonical))
        print(f"model_call(canonical={canonical}) + tool: {per_step * 1e6:.0f} µs per step "
              f"({args.steps} steps, the request growing to {2 * args.steps + 1} messages)")


if __name__ == "__main__":
    main()
