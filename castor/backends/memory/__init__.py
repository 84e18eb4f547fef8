"""In-memory implementations of the state seams: the Python API's default and the tests' double.

State lives in dicts guarded by one lock per store, so tool threads and several event loops in one
process see consistent budgets. Nothing survives the process.
"""

from __future__ import annotations

from castor._sealing import DataKey
from castor.backends.memory.journal import MemoryJournal, MemoryRunStore, summarize
from castor.backends.memory.state import MemoryApprovalStore, MemoryBudgetStore
from castor.seams import Backend

__all__ = [
    "MemoryApprovalStore",
    "MemoryBudgetStore",
    "MemoryJournal",
    "MemoryRunStore",
    "memory_backend",
    "summarize",
]


def memory_backend() -> Backend:
    """A fresh in-memory bundle."""
    return Backend(
        MemoryJournal(), MemoryBudgetStore(), MemoryApprovalStore(), MemoryRunStore(), "memory://",
        data_key=DataKey.for_process(),
    )
