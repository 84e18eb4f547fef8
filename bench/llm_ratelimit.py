"""Fleet-wide model rate limits: worker processes sharing one tokens-per-minute limit through Redis.

    python bench/llm_ratelimit.py            # 8 processes x 4 callers for 3 minutes, TPM 20,000
    python bench/llm_ratelimit.py --quick    # 8 processes for 20 s with 10-second windows
    python bench/llm_ratelimit.py --help     # --processes, --seconds, --tpm, --rpm, --window, --skew

It starts the fake OpenAI-compatible server (``tests/llm/fake_openai.py``, in this process) with the same
limit, then the worker processes (``tests/llm/_hammer.py``): each caller acquires its estimate under the
shared ``RedisRateLimiter``, sends the request and settles to the reported usage. The server records every
request at its arrival; the table shows, per minute, the tokens that arrived and the fullest window of
``--window`` seconds that ended in it, beside the limit. "violations" counts requests that put a window
over the limit (the server answers those 429, as a provider would): the promise is none.

First it times the acquire itself: ``--acquires`` acquires on an unlimited key, one at a time, and counts
the writes to Redis (one write: one round trip).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from castor.backends.redis import resp  # noqa: E402
from castor.llm.ratelimit import LimitKey  # noqa: E402
from castor.llm.redis_limits import RedisRateLimiter  # noqa: E402
from tests.llm._hammer import started_together  # noqa: E402
from tests.llm.fake_openai import FakeOpenAI  # noqa: E402


async def time_acquires(url: str, prefix: str, n: int) -> tuple[float, float]:
    """Median microseconds per acquire and round trips per acquire, on a key with no limit."""
    writes = 0
    flush = resp._Protocol._flush

    def counting(self: resp._Protocol) -> None:
        nonlocal writes
        writes += 1
        flush(self)

    limiter = RedisRateLimiter(url, prefix, {"bench/*": {"tpm": 10**12}}, window=1.0, skew=0)
    key = LimitKey.of("bench", "timing", "k")
    await limiter.acquire(key, 1)  # connected, the script loaded
    resp._Protocol._flush = counting  # type: ignore[method-assign]
    times = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            await limiter.acquire(key, 1)
            times.append(time.perf_counter() - started)
    finally:
        resp._Protocol._flush = flush  # type: ignore[method-assign]
    await limiter.close()
    return statistics.median(times) * 1e6, writes / n


def hammer(args: argparse.Namespace, server_url: str, prefix: str) -> list[dict[str, float]]:
    """Run the worker processes to the end; what each did."""
    options = [
        "--url", server_url, "--redis", args.redis, "--prefix", prefix,
        "--tpm", str(args.tpm), "--window", str(args.window), "--skew", str(args.skew),
        "--seconds", str(args.seconds), "--concurrency", str(args.concurrency),
        *(["--rpm", str(args.rpm)] if args.rpm else []),
    ]
    procs = started_together(options, args.processes, ROOT)  # each on the same clock, however slow to start
    outs = [proc.communicate()[0] for proc in procs]
    if any(proc.returncode for proc in procs):
        raise SystemExit(f"a worker process failed: {outs}")
    return [json.loads(out.strip().splitlines()[-1]) for out in outs]


def cleanup(url: str, prefix: str) -> None:
    """Delete the bench's keys."""
    import redis

    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)
    client.close()


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 s with 10-second windows")
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4, help="callers per process")
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--tpm", type=int, default=20_000)
    parser.add_argument("--rpm", type=int, default=None)
    parser.add_argument("--window", type=float, default=60.0, help="the limit's window (a minute)")
    parser.add_argument("--skew", type=float, default=1.0, help="seconds the limiter adds to each window")
    parser.add_argument("--acquires", type=int, default=2000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.window, args.skew, args.tpm = 20.0, 10.0, 0.5, args.tpm // 6
    prefix = f"bench-llm-{uuid.uuid4().hex[:8]}"
    try:
        micros, trips = asyncio.run(time_acquires(args.redis, prefix, args.acquires))
        print(f"acquire: {micros:.0f} us median over {args.acquires}, {trips:.2f} round trips each")
        server = FakeOpenAI(tpm=args.tpm, rpm=args.rpm, window=args.window).start()
        started = time.monotonic()
        try:
            results = hammer(args, server.url, prefix)
            stats = server.counter.stats()
        finally:
            server.stop()
        elapsed = time.monotonic() - started
    finally:
        cleanup(args.redis, prefix)
    print(f"{args.processes} processes x {args.concurrency} callers, {elapsed:.0f} s, TPM {args.tpm} per "
          f"{args.window:g} s window (limiter skew {args.skew:g} s)")
    print("| minute | tokens arrived | fullest window ending in it | limit |")
    print("|---|---|---|---|")
    for minute, (tokens, peak) in enumerate(zip(stats["minutes"], stats["minute_peaks"], strict=True)):
        print(f"| {minute + 1} | {tokens} | {peak} | {args.tpm} |")
    calls = sum(r["calls"] for r in results)
    waited = sum(r["waited"] for r in results)
    print(f"requests {stats['requests']}, tokens {stats['tokens']}, fullest window {stats['max_window_tokens']} "
          f"(limit {args.tpm}), violations {stats['violations']}, 429s seen by workers "
          f"{sum(r['refused'] for r in results)}")
    print(f"calls per process: {[int(r['calls']) for r in results]}; mean wait for a turn "
          f"{waited / max(calls, 1):.2f} s, longest {max(r['longest_wait'] for r in results):.1f} s")
    print(f"used {stats['tokens'] / (args.tpm * elapsed / (args.window + args.skew)):.0%} of what the windows allowed")


if __name__ == "__main__":
    main()
