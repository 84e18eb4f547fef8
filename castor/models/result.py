"""castor-kernel 0.5.1's ``castor.models.result``: ``SyscallResult`` (``castor.results``)."""

from castor.results import SyscallResult

__all__ = ["SyscallResult"]
