"""A live step counter for ``castor run`` / ``resume`` / ``fork`` while the run goes: on a terminal by
default (one line on stderr, rewritten in place and cleared at the end), or with ``--progress`` (also
piped: a line each time the count changes). It reads the journal's length through the seam every
``EVERY`` seconds, so it costs the run nothing and shows the steps another process drives too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from typing import TextIO

from castor.seams import Backend

EVERY = 0.5
CLEAR_LINE = "\r\x1b[K"


def add_progress(parser: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress``."""
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show a live step counter on stderr (default: on a terminal)")


def wanted(args: argparse.Namespace, stream: TextIO) -> bool:
    """Whether to show the counter: ``--progress``, else a terminal (not while asking a human on it)."""
    chosen = getattr(args, "progress", None)
    if chosen is not None:
        return bool(chosen)
    return stream.isatty() and getattr(args, "hitl", "suspend") != "interactive"


@contextlib.asynccontextmanager
async def step_counter(backend: Backend, pid: str, args: argparse.Namespace,
                       stream: TextIO | None = None) -> AsyncIterator[None]:
    """Show run ``pid``'s step count while the block runs (if ``wanted``)."""
    stream = stream or sys.stderr
    if not wanted(args, stream):
        yield
        return
    tty = stream.isatty()
    began = time.monotonic()

    async def show() -> None:
        last = -1
        while True:
            steps = await backend.journal.length(pid)
            if steps != last:
                text = f"{pid}: {steps} step{'' if steps == 1 else 's'}, {time.monotonic() - began:.0f}s"
                stream.write(f"{CLEAR_LINE}{text}" if tty else f"progress: {text}\n")
                stream.flush()
                last = steps
            await asyncio.sleep(EVERY)

    task = asyncio.create_task(show())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if tty:
            stream.write(CLEAR_LINE)
            stream.flush()
