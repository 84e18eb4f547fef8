"""castor-kernel 0.5.1's ``castor.kernel.decisions``: its syscall decision function and its error.

0.5.1 decided a syscall in a pure function (``decide_syscall`` returning ``ReplayHit`` / ``Suspend`` /
``Deny`` / ``Allow``) that its proxy then carried out. Here the stages of the kernel's syscall handler
chain decide and act in one pass (``castor.kernel.chain``), so those names import and their use says
what to use instead. ``ReplayDivergenceError`` is Castor's own, raised when a resumed agent asks for
another call than its journal holds. (Castor's human decisions are ``castor.kernel.approvals``.)
"""

from castor.compat import unsupported
from castor.errors import ReplayDivergenceError

_CHAIN = (
    "the kernel's syscall handler chain decides and acts on every call (castor.kernel.chain); run the agent "
    "with Castor(...).run(agent) and extend the chain with Castor(interceptors=[...])"
)

decide_syscall = unsupported("kernel.decisions.decide_syscall", _CHAIN)
ReplayHit = unsupported("kernel.decisions.ReplayHit", _CHAIN)
Suspend = unsupported("kernel.decisions.Suspend", _CHAIN)
Deny = unsupported("kernel.decisions.Deny", _CHAIN)
Allow = unsupported("kernel.decisions.Allow", _CHAIN)

__all__ = ["Allow", "Deny", "ReplayDivergenceError", "ReplayHit", "Suspend", "decide_syscall"]
