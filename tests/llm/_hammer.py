"""One worker process of the rate-limit tests and bench: calls the fake server as fast as its limiter lets it.

``python -m tests.llm._hammer --url http://127.0.0.1:<port>/v1 --redis redis://... --prefix p --tpm N
--seconds S`` runs ``--concurrency`` callers for ``S`` seconds, each: acquire its estimate (prompt
estimate + ``max_tokens``) under the shared ``RedisRateLimiter``, send the request, settle to the reported
usage. A 429 pauses the key (``limited``) and the caller goes on. It prints one JSON line: calls made,
429s, seconds waited in total, the longest wait. With ``--ready``, it prints ``ready`` once its imports
and its limiter are done and starts its clock at the next line on its standard input: processes started
together then hammer together, however long each took to start on a loaded machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from typing import Any

import aiohttp

from castor.llm.ratelimit import LimitKey, ProviderRateLimited, RateLimiter, RateLimitError, limited
from castor.llm.redis_limits import RedisRateLimiter

KEY = LimitKey.of("fake", "gpt-test", "sk-test")


def estimate(messages: list[dict[str, Any]]) -> int:
    """A cautious client-side estimate of the prompt's tokens (above what the server counts)."""
    return sum(len(str(m["content"])) // 3 + 5 for m in messages)


async def call_once(
    session: aiohttp.ClientSession, url: str, limiter: RateLimiter, rng: random.Random, timeout: float
) -> float:
    """One limited call, waiting up to ``timeout`` for its turn; the seconds it waited."""
    messages = [{"role": "user", "content": "x" * rng.randint(20, 400)}]
    max_tokens = rng.randint(8, 64)
    async with limited(limiter, KEY, estimate(messages) + max_tokens, timeout=timeout) as slot:
        body = {"model": KEY.model, "messages": messages, "max_tokens": max_tokens}
        async with session.post(f"{url}/chat/completions", json=body) as response:
            if response.status == 429:
                after = float(response.headers["retry-after"])
                raise ProviderRateLimited("429 from the fake server", retry_after=after)
            response.raise_for_status()
            slot.used(int((await response.json())["usage"]["total_tokens"]))
    return slot.reservation.waited


async def hammer(args: argparse.Namespace) -> dict[str, Any]:
    """Run the callers; what they did."""
    limits = {f"{KEY.provider}/{KEY.model}": {"rpm": args.rpm, "tpm": args.tpm}}
    limiter = RedisRateLimiter(args.redis, args.prefix, limits, window=args.window, skew=args.skew)
    out = {"calls": 0, "refused": 0, "waited": 0.0, "longest_wait": 0.0}
    if args.ready:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
    end = time.monotonic() + args.seconds

    async def caller(n: int) -> None:
        rng = random.Random(n)
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < end:
                try:
                    waited = await call_once(session, args.url, limiter, rng, end - time.monotonic())
                except RateLimitError:
                    break  # no turn before the end
                except ProviderRateLimited:
                    out["refused"] += 1
                    continue
                out["calls"] += 1
                out["waited"] += waited
                out["longest_wait"] = max(out["longest_wait"], waited)

    await asyncio.gather(*(caller(n) for n in range(args.concurrency)))
    await limiter.close()
    return out


def started_together(options: list[str], n: int, cwd: Any) -> list[subprocess.Popen[str]]:
    """``n`` hammer processes with ``options`` (``--url``, ``--redis``, ``--prefix``, limits), started
    together: each says it is ready, then all are told to go. On a loaded machine one process can take
    seconds longer to import; started on its own clock, it would find the window's turns queued past its
    end by the others and get none."""
    argv = [sys.executable, "-m", "tests.llm._hammer", *options, "--ready"]
    procs = [subprocess.Popen(argv, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
    for proc in procs:
        line = proc.stdout.readline().strip() if proc.stdout is not None else ""
        if line != "ready":
            for other in procs:
                other.kill()
            raise RuntimeError(f"a hammer process did not start (it said {line!r})")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    return procs


def main() -> None:
    """Parse the options, hammer, print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--rpm", type=int)
    parser.add_argument("--tpm", type=int)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--skew", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--ready", action="store_true", help="print ready, then start at a line on stdin")
    print(json.dumps(asyncio.run(hammer(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
