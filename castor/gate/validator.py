"""castor-kernel 0.5.1's ``castor.gate.validator``: ``SyscallGate`` (``castor.registry.SyscallGate``)."""

from castor.registry import SyscallGate

__all__ = ["SyscallGate"]
