"""castor-kernel 0.5.1's ``castor.kernel.journal``: its ``InMemoryJournal``.

Here a run's journal is ``checkpoint.syscall_log`` and the store's is ``kernel.backend.journal`` (the
``castor.seams.Journal`` seam); the name imports and its use says so (``castor.compat``).
"""

from castor.compat import InMemoryJournal

__all__ = ["InMemoryJournal"]
