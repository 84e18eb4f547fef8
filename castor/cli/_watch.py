"""``--watch [SECONDS]``: a listing (``ps``, ``budget show``) printed again every few seconds until Ctrl-C.

On a terminal each frame replaces the last (the screen is cleared); piped, frames follow each other, each
under a ``--- <time> ---`` line, so a script or a log can read them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable

from castor._limits import option_type

Handler = Callable[[argparse.Namespace], Awaitable[int]]
CLEAR = "\x1b[H\x1b[2J"


def add_watch(parser: argparse.ArgumentParser, command: str) -> None:
    """``--watch [SECONDS]`` of ``command`` (2 s when given bare)."""
    parser.add_argument("--watch", nargs="?", const=2.0, default=None, type=option_type(f"{command} --watch"),
                        metavar="SECONDS", help="print it again every SECONDS (default 2) until Ctrl-C")


def watched(handler: Handler) -> Handler:
    """``handler``, run again every ``--watch`` seconds when that option is given."""

    async def watch(args: argparse.Namespace) -> int:
        every = getattr(args, "watch", None)
        if every is None:
            return await handler(args)
        tty = sys.stdout.isatty()
        try:
            while True:
                stamp = time.strftime("%H:%M:%S")
                print(f"{CLEAR}every {every:g}s, {stamp} (Ctrl-C stops)" if tty else f"--- {stamp} ---", flush=True)
                code = await handler(args)
                if code:
                    return code
                sys.stdout.flush()
                await asyncio.sleep(every)
        except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels the command; a watch ends quietly
            return 0

    watch.__name__ = getattr(handler, "__name__", "watch")
    watch.__doc__ = handler.__doc__
    return watch

