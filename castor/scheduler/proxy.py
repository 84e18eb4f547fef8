"""castor-kernel 0.5.1's ``castor.scheduler.proxy``: the legacy agent's ``SyscallProxy``."""

from castor.errors import ReplayDivergenceError
from castor.lib.proxy import SyscallProxy

__all__ = ["ReplayDivergenceError", "SyscallProxy"]
