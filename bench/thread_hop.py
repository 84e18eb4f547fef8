"""What one guarded call of a synchronous framework (smolagents, CrewAI) costs in thread hops.

    python bench/thread_hop.py              # 5 repetitions of 5,000 round trips each
    python bench/thread_hop.py --calls 20000 --repeat 7

A synchronous framework runs its loop in a thread of its own; each guarded call goes to the run's event
loop and back (``castor.frameworks._loop_calls.call_on_loop``). Two figures, CPU time of the process (all
its threads) per round trip, median over the repetitions, both measured in this invocation:

- baseline: two plain threads passing an item back and forth through two ``queue.SimpleQueue`` (the
  least a round trip between two threads costs here: two wake-ups and the GIL changing hands twice);
- call_on_loop: a framework thread awaiting a coroutine that returns at once on the run's loop, through
  Castor's hop (the loop woken through its self-pipe, the answer on a ``SimpleQueue``).

Their ratio is what Castor's hop costs beyond the machine's floor; the baseline itself is what any design
that keeps the framework's loop off the run's event loop pays per call.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import statistics
import threading
import time

from castor.frameworks._common import in_thread
from castor.frameworks._loop_calls import blocking


def baseline(calls: int) -> float:
    """CPU µs per round trip between two plain threads (two ``SimpleQueue``)."""
    there: queue.SimpleQueue[int] = queue.SimpleQueue()
    back: queue.SimpleQueue[int] = queue.SimpleQueue()

    def echo() -> None:
        for _ in range(calls):
            back.put(there.get())

    other = threading.Thread(target=echo)
    other.start()
    started = time.process_time()
    for i in range(calls):
        there.put(i)
        back.get()
    spent = time.process_time() - started
    other.join()
    return spent / calls * 1e6


async def _nothing() -> int:
    return 1


def _framework_loop(calls: int) -> None:
    for _ in range(calls):
        blocking("bench", _nothing, "bench/thread_hop.py")


async def hop(calls: int) -> float:
    """CPU µs per ``call_on_loop`` round trip from a framework thread (``in_thread``) to this loop."""
    started = time.process_time()
    await in_thread(_framework_loop, calls)
    return (time.process_time() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000, help="round trips per repetition")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions (the median is printed)")
    args = parser.parse_args()
    floors, hops = [], []
    for _ in range(args.repeat):  # alternating, so both see the same moments of a shared machine's load
        floors.append(baseline(args.calls))
        hops.append(asyncio.run(hop(args.calls)))
    floor, ours = statistics.median(floors), statistics.median(hops)
    print(f"CPU time per round trip, median of {args.repeat} x {args.calls:,}")
    print(f"  baseline, two threads and two SimpleQueue   {floor:7.1f} µs  ({min(floors):.1f}-{max(floors):.1f})")
    print(f"  call_on_loop, framework thread to run loop  {ours:7.1f} µs  ({min(hops):.1f}-{max(hops):.1f})")
    print(f"  ratio                                       {ours / floor:7.2f}")


if __name__ == "__main__":
    main()
