"""A small OpenAI-compatible chat server on 127.0.0.1 that counts what it is sent, for the rate-limit tests.

``POST /v1/chat/completions`` answers a deterministic reply (JSON, or Server-Sent Events with ``stream``) with
its ``usage``: prompt tokens ``len(content) // 4 + 4`` per message (``prompt_tokens()``), completion tokens
``min(max_tokens, reply_tokens)``. Every request is recorded at its arrival with its tokens; with ``rpm`` /
``tpm`` set, one that would put any ``window``-second window over a limit is a *violation*, refused with a
429 and ``retry-after`` as a provider would. ``POST /admin/throttle {"count": n, "retry_after": s}`` has
the next ``n`` requests refused with a 429 (not counted as sent). ``POST /admin/gate {"after": n, "timeout": s,
"cut": bool}`` holds the next stream after ``n`` chunks until ``POST /admin/release`` (or ``s`` seconds), then
sends the rest or breaks the connection (``cut``). ``GET /admin/stats`` gives the counts,
the largest window seen (requests and tokens), and per minute since the first request its tokens and the
fullest window that ended in it.

``POST /admin/script {"replies": [...]}`` has the next requests answered in order by those replies instead
(``{"content": text}`` or ``{"tool_calls": [{"name", "arguments"}]}``: a framework agent's tool calls);
``GET /admin/requests`` gives the bodies of the requests served.

``FakeOpenAI().start()`` serves it from a thread of this process (``stop()``); ``python -m
tests.llm.fake_openai --tpm N`` serves it from a process of its own, printing ``PORT <n>`` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import threading
import time
from typing import Any

from aiohttp import web


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """The prompt tokens the server counts for ``messages``."""
    return sum(len(str(m.get("content") or "")) // 4 + 4 for m in messages)


class Counter:
    """Every request's arrival and tokens; the largest sliding window of each; the violations."""

    def __init__(self, rpm: int | None, tpm: int | None, window: float) -> None:
        self.rpm, self.tpm, self.window = rpm, tpm, window
        self.started: float | None = None  # the first request's arrival: minutes count from it
        self.recent: collections.deque[tuple[float, int]] = collections.deque()  # (arrival, tokens) in the window
        self.window_tokens = 0
        self.max_tokens = 0
        self.max_requests = 0
        self.requests = 0
        self.tokens = 0
        self.violations = 0
        self.throttled = 0
        self.throttle: tuple[int, float] = (0, 0.0)  # requests still to refuse, their retry-after
        self.minutes: dict[int, int] = collections.defaultdict(int)  # tokens arrived in each minute since the start
        self.authorization: collections.Counter[str] = collections.Counter()  # requests by Authorization header
        self.arrivals: list[tuple[float, bool]] = []  # (wall-clock time, refused with a 429) of every request
        self.minute_peaks: dict[int, int] = collections.defaultdict(int)  # the fullest window ending in each minute
        # A gated stream: after ``after`` chunks it waits for POST /admin/release (up to ``timeout`` s), then
        # sends the rest, or breaks the connection (``cut``); ``released``: whether the release came in time.
        self.gate: dict[str, Any] = {}
        self.release: asyncio.Event | None = None
        self.script: collections.deque[dict[str, Any]] = collections.deque()  # replies to give before the default
        self.bodies: list[dict[str, Any]] = []  # the requests served (their JSON bodies)

    def admit(self, tokens: int) -> float | None:
        """Record a request of ``tokens`` arriving now; the retry-after of a refusal, or None."""
        count, after = self.throttle
        if count > 0:
            self.throttle = (count - 1, after)
            self.throttled += 1
            return after
        now = time.monotonic()
        while self.recent and self.recent[0][0] <= now - self.window:
            self.window_tokens -= self.recent.popleft()[1]
        self.recent.append((now, tokens))
        self.window_tokens += tokens
        self.requests += 1
        self.tokens += tokens
        if self.started is None:
            self.started = now
        minute = int((now - self.started) // 60)
        self.minutes[minute] += tokens
        self.minute_peaks[minute] = max(self.minute_peaks[minute], self.window_tokens)
        self.max_tokens = max(self.max_tokens, self.window_tokens)
        self.max_requests = max(self.max_requests, len(self.recent))
        over_tpm = self.tpm is not None and self.window_tokens > self.tpm
        over_rpm = self.rpm is not None and len(self.recent) > self.rpm
        if over_tpm or over_rpm:
            self.violations += 1
            return self.recent[0][0] + self.window - now
        return None

    def stats(self) -> dict[str, Any]:
        """What the server saw, as JSON."""
        return {
            "requests": self.requests, "tokens": self.tokens, "violations": self.violations,
            "throttled": self.throttled, "max_window_tokens": self.max_tokens,
            "max_window_requests": self.max_requests, "rpm": self.rpm, "tpm": self.tpm, "window": self.window,
            "minutes": [self.minutes[m] for m in sorted(self.minutes)],
            "minute_peaks": [self.minute_peaks[m] for m in sorted(self.minutes)],
            "authorization": dict(self.authorization),
            "arrivals": self.arrivals,
            "gate": {k: v for k, v in self.gate.items() if k in ("released", "sent")},
        }


def _refusal(after: float) -> web.Response:
    body = {"error": {"type": "rate_limit_exceeded", "message": "Rate limit reached", "code": "rate_limit_exceeded"}}
    return web.json_response(body, status=429, headers={"retry-after": f"{max(after, 0.001):.3f}"})


async def _sse(request: web.Request, counter: Counter, base: dict[str, Any], words: list[str],
               usage: dict[str, int]) -> web.StreamResponse:
    """The reply as Server-Sent Events, a word a chunk, held at the counter's gate if one is armed."""
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    gate = counter.gate
    for i, word in enumerate(words):
        if gate and i == gate["after"] and "released" not in gate:
            await _hold(counter)
            if gate.get("cut"):
                assert request.transport is not None
                request.transport.close()  # the provider's connection breaks mid-stream
                return response
        delta = {"content": word if i == 0 else " " + word}
        chunk = {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        if gate:
            gate["sent"] = i + 1
    last = {**base, "object": "chat.completion.chunk", "usage": usage,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    await response.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())
    await response.write_eof()
    return response


async def _hold(counter: Counter) -> None:
    """Wait at the gate for a release (the client read the first chunks), at most the gate's timeout."""
    assert counter.release is not None
    try:
        await asyncio.wait_for(counter.release.wait(), counter.gate.get("timeout", 10.0))
        counter.gate["released"] = True
    except TimeoutError:
        counter.gate["released"] = False


def make_app(counter: Counter, *, reply_tokens: int = 16, latency: float = 0.0) -> web.Application:
    """The server's routes over ``counter``."""

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        messages = body.get("messages")
        if not isinstance(messages, list) or not body.get("model"):
            return web.json_response({"error": {"message": "model and messages are required"}}, status=400)
        counter.authorization[request.headers.get("Authorization", "")] += 1  # which key called (429s too)
        completion = min(int(body.get("max_tokens") or reply_tokens), reply_tokens)
        usage = {"prompt_tokens": prompt_tokens(messages), "completion_tokens": completion}
        usage["total_tokens"] = usage["prompt_tokens"] + completion
        after = counter.admit(usage["total_tokens"])
        counter.arrivals.append((time.time(), after is not None))
        if after is not None:
            return _refusal(after)
        if latency:
            await asyncio.sleep(latency)
        words = ["ok"] * completion
        base = {"id": f"chatcmpl-{counter.requests}", "created": int(time.time()), "model": body["model"]}
        counter.bodies.append(body)
        if not body.get("stream"):
            message, finish = _reply(counter, words)
            return web.json_response({
                **base, "object": "chat.completion", "usage": usage,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            })
        return await _sse(request, counter, base, words, usage)

    async def throttle(request: web.Request) -> web.Response:
        body = await request.json()
        counter.throttle = (int(body["count"]), float(body["retry_after"]))
        return web.json_response({"ok": True})

    async def arm(request: web.Request) -> web.Response:
        counter.gate = dict(await request.json())
        counter.release = asyncio.Event()
        return web.json_response({"ok": True})

    async def release(_request: web.Request) -> web.Response:
        if counter.release is not None:
            counter.release.set()
        return web.json_response({"ok": True})

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(counter.stats())


    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/admin/throttle", throttle)
    app.router.add_get("/admin/stats", stats)
    app.router.add_post("/admin/gate", arm)
    app.router.add_post("/admin/release", release)
    _script_routes(app, counter)
    return app


def _script_routes(app: web.Application, counter: Counter) -> None:
    """``POST /admin/script`` (replies to give in order) and ``GET /admin/requests`` (the bodies served)."""

    async def script(request: web.Request) -> web.Response:
        counter.script.extend((await request.json())["replies"])
        return web.json_response({"ok": True})

    async def requests(_request: web.Request) -> web.Response:
        return web.json_response(counter.bodies)

    app.router.add_post("/admin/script", script)
    app.router.add_get("/admin/requests", requests)


def _reply(counter: Counter, words: list[str]) -> tuple[dict[str, Any], str]:
    """The next scripted reply, else the words: a chat completion's message and finish reason."""
    if counter.script:
        return _scripted(counter.script.popleft(), counter.requests)
    return {"role": "assistant", "content": " ".join(words)}, "stop"


def _scripted(reply: dict[str, Any], n: int) -> tuple[dict[str, Any], str]:
    """A scripted reply as a chat completion's message and finish reason (tool call ids from the request count)."""
    calls = [{"id": f"call_{n}_{i}", "type": "function",
              "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments") or {})}}
             for i, c in enumerate(reply.get("tool_calls") or ())]
    message = {"role": "assistant", "content": reply.get("content") or None, **({"tool_calls": calls} if calls else {})}
    return message, "tool_calls" if calls else "stop"


class FakeOpenAI:
    """The server in a thread of this process: ``url`` (``http://127.0.0.1:<port>/v1``) once ``start()`` returned."""

    def __init__(self, *, rpm: int | None = None, tpm: int | None = None, window: float = 60.0, **options: Any):
        self.counter = Counter(rpm, tpm, window)
        self._app = make_app(self.counter, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner = web.AppRunner(self._app, access_log=None)
        self.url = ""

    def start(self) -> FakeOpenAI:
        """Listen on a free port of 127.0.0.1."""
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(_listen(self._runner, 0), self._loop).result(10)
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    def stop(self) -> None:
        """Stop listening and end the thread."""
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


async def _listen(runner: web.AppRunner, port: int) -> int:
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


async def _serve(args: argparse.Namespace) -> None:
    counter = Counter(args.rpm, args.tpm, args.window)
    runner = web.AppRunner(make_app(counter, reply_tokens=args.reply_tokens, latency=args.latency), access_log=None)
    port = await _listen(runner, args.port)
    print(f"PORT {port}", flush=True)
    await asyncio.Event().wait()  # until the process is terminated


def main() -> None:
    """Serve from this process until it is terminated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rpm", type=int)
    parser.add_argument("--tpm", type=int)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--reply-tokens", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.0)
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
