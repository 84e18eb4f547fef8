"""SQLite implementations of the state seams: the embedded default, one local file, stdlib ``sqlite3``.

One connection per backend in WAL mode: readers in other processes (``castor ps``) never block the
run, and a committed step survives a killed process. Statements are short and run inline; the
connection is guarded by a lock because tool threads and several event loops may share a kernel.

Per-run budgets live in memory while the run is driven by this process: the journal record of each
step carries what it was charged, committed with the record, so a resumed run reopens its ledger from
its journal and a charge becomes durable exactly when its step does. Shared scopes, which other runs
and processes draw from, are SQLite rows changed in one transaction per charge.
"""

from __future__ import annotations

from castor._sealing import DataKey
from castor.backends.sqlite._db import SqliteDatabase
from castor.backends.sqlite.journal import SqliteJournal, SqliteRunStore
from castor.backends.sqlite.state import SqliteApprovalStore, SqliteBudgetStore
from castor.seams import Backend

__all__ = [
    "SqliteApprovalStore",
    "SqliteBudgetStore",
    "SqliteDatabase",
    "SqliteJournal",
    "SqliteRunStore",
    "sqlite_backend",
]


def sqlite_backend(path: str, *, synchronous: str = "NORMAL", at_most_once: bool = False) -> Backend:
    """A bundle of SQLite stores sharing one connection to ``path``; ``at_most_once``: every non-idempotent
    call is claimed before it runs (``castor.seams.Backend.at_most_once``)."""
    db = SqliteDatabase(path, synchronous=synchronous)
    backend = Backend(
        SqliteJournal(db), SqliteBudgetStore(db), SqliteApprovalStore(db), SqliteRunStore(db),
        url=f"sqlite:///{path}", durable=path != ":memory:", data_key=DataKey.for_file(path), at_most_once=at_most_once,
    )
    return backend
