"""castor-kernel 0.5.1's ``castor.scheduler.persistence``: the checkpoint stores ``Castor(store=...)`` takes."""

from castor._errors import RunNotFoundError as CheckpointNotFoundError
from castor.compat import CheckpointStore, MemoryCheckpointStore

__all__ = ["CheckpointNotFoundError", "CheckpointStore", "MemoryCheckpointStore"]
