"""castor-kernel 0.5.1's ``castor.scheduler.persistence``: the checkpoint stores ``Castor(store=...)`` takes.

``CheckpointStore(url)`` is a Castor store (a ``castor.seams.Backend``) opened from a store URL, with 0.5.1's
synchronous methods on top; ``CheckpointNotFoundError`` is ``castor.RunNotFoundError``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NoReturn

from castor.backends import open_backend
from castor.checkpoint import AgentCheckpoint
from castor.errors import RunNotFoundError as CheckpointNotFoundError
from castor.errors import UnsupportedError
from castor.kernel import Castor
from castor.kernel.approvals import run_now
from castor.seams import Backend

__all__ = ["CheckpointNotFoundError", "CheckpointStore", "MemoryCheckpointStore"]


class CheckpointStore(Backend):
    """castor-kernel 0.5.1's checkpoint store over a store URL: ``Castor(store=CheckpointStore(url))``.

    Its synchronous ``save`` / ``load`` / ``delete`` / ``list_pids`` complete in place for stores that
    answer without waiting (memory, SQLite); for Redis, use the kernel's async ``save`` / ``aload``.
    """

    def __init__(self, db_url: str = "sqlite:///castor.db") -> None:
        backend = open_backend(db_url)
        super().__init__(**{f.name: getattr(backend, f.name) for f in dataclasses.fields(Backend)})
        self._kernel: Castor | None = None

    def _castor(self) -> Castor:
        if self._kernel is None:
            self._kernel = Castor(tools=[], store=self)
        return self._kernel

    def save(self, checkpoint: AgentCheckpoint) -> None:
        """Persist the checkpoint, header and journal."""
        run_now(self._castor().save(checkpoint), "CheckpointStore.save()")

    def load(self, pid: str) -> AgentCheckpoint:
        """The checkpoint of ``pid``; ``RunNotFoundError`` (a ``KeyError``) if there is none."""
        return run_now(self._castor().aload(pid), "CheckpointStore.load()")

    def delete(self, pid: str) -> None:
        """Forget the run ``pid``: its header, journal and approvals."""

        async def forget() -> None:
            await self.runs.delete(pid)
            await self.journal.delete(pid)
            await self.approvals.clear(pid)

        run_now(forget(), "CheckpointStore.delete()")

    def list_pids(self) -> list[str]:
        """Every stored run's pid."""

        async def every() -> list[str]:
            pids: list[str] = []
            while batch := await self.runs.list(limit=500, offset=len(pids)):
                pids += [run.pid for run in batch]
            return pids

        return run_now(every(), "CheckpointStore.list_pids()")

    def write_wal(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not provided: there is no separate write-ahead log."""
        raise UnsupportedError(_NO_WAL)

    complete_wal = abandon_wal = write_wal


_NO_WAL = (
    "CheckpointStore has no write-ahead log here: Castor journals each call write-once as it completes "
    "and refunds what it could not journal; read the journal as checkpoint.syscall_log"
)


class MemoryCheckpointStore(CheckpointStore):
    """castor-kernel 0.5.1's in-process store: Castor's memory store, what ``Castor()`` uses by default."""

    def __init__(self) -> None:
        super().__init__("memory://")
