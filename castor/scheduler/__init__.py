"""castor-kernel 0.5.1's module path for driving agents (``castor.scheduler.proxy``, ``.runner``,
``.hitl``, ``.persistence``, ``.agent_registry``): thin modules over Castor's own, kept so code written
for 0.5.1 imports unchanged. (The fleet's coordinator is ``castor.fleet.scheduler``.)
"""

from castor.agents import AgentNotFoundError, AgentRegistry, castor_agent, default_agent_registry
from castor.compat import AgentRunner, HITLHandler
from castor.errors import ReplayDivergenceError
from castor.lib.proxy import SyscallProxy
from castor.scheduler.persistence import CheckpointStore, MemoryCheckpointStore

__all__ = [
    "AgentNotFoundError", "AgentRegistry", "AgentRunner", "CheckpointStore", "HITLHandler", "MemoryCheckpointStore",
    "ReplayDivergenceError", "SyscallProxy", "castor_agent", "default_agent_registry",
]
