"""castor-kernel 0.5.1's ``castor.models.checkpoint``: the checkpoint and its journal records."""

from castor.checkpoint import AgentCheckpoint, SyscallRecord
from castor.compat import CastorMessage, SuspendInterrupt

__all__ = ["AgentCheckpoint", "CastorMessage", "SuspendInterrupt", "SyscallRecord"]
