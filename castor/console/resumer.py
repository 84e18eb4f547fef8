"""Resume a CLI run on an embedded store after a decision, as ``castor approve`` would.

A run that ``castor run`` started on a SQLite file records its import specs; nothing else drives it once
it suspended. After a decision on such a run the console starts ``castor resume PID --db PATH`` in a
process of its own (the run's agent and tools never load into the console's process), and the live feed
shows the run advance. A run without specs (a host program's) is left to its program; a fleet run to its
coordinators. ``[console] resume = false`` only records decisions.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

log = logging.getLogger("castor.console")


class Resumer:
    """Starts ``castor resume`` processes for runs of a SQLite store and reaps them."""

    def __init__(self, store_url: str) -> None:
        self.path = store_url[len("sqlite:///"):] if store_url.startswith("sqlite:///") else None
        self._waiters: set[asyncio.Task[int]] = set()

    @property
    def enabled(self) -> bool:
        """Whether the store is one whose runs the console resumes (a SQLite file)."""
        return self.path is not None and self.path != ":memory:"

    def command(self, pid: str) -> list[str]:
        """The command line that resumes ``pid``."""
        return [sys.executable, "-m", "castor", "resume", pid, "--db", str(self.path)]

    def start(self, pid: str) -> None:
        """Resume ``pid`` in the background; it prints where the run stopped on the console's own output."""
        # A session of its own: a Ctrl-C of the console lets the resume finish its step.
        proc = subprocess.Popen(self.command(pid), stdin=subprocess.DEVNULL, start_new_session=True)
        log.info("resuming %s (pid %d)", pid, proc.pid)
        task = asyncio.create_task(asyncio.to_thread(proc.wait))
        self._waiters.add(task)
        task.add_done_callback(self._waiters.discard)

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait (up to ``timeout``) for the resumes under way."""
        if self._waiters:
            await asyncio.wait(set(self._waiters), timeout=timeout)
