"""castor-kernel 0.5.1's module path for its data models (``castor.models.checkpoint``, ``.capability``,
``.result``): thin modules over ``castor.checkpoint``, ``castor.compat`` and ``castor.results``.
"""

from castor.checkpoint import AgentCheckpoint, Capability, SyscallRecord
from castor.compat import CastorMessage, SuspendInterrupt, SyscallRequest, SyscallResponse
from castor.results import SyscallResult

__all__ = [
    "AgentCheckpoint", "Capability", "CastorMessage", "SuspendInterrupt", "SyscallRecord", "SyscallRequest",
    "SyscallResponse", "SyscallResult",
]
