"""castor-kernel 0.5.1's ``castor.models.capability``: ``Capability`` and the syscall records."""

from castor.checkpoint import Capability
from castor.compat import SyscallRequest, SyscallResponse

__all__ = ["Capability", "SyscallRequest", "SyscallResponse"]
