"""castor-kernel 0.5.1's ``castor.scheduler.runner``: ``AgentRunner`` (refuses use: run agents with
``Castor.run`` / ``run_async``; see ``castor.compat``)."""

from castor.compat import AgentRunner

__all__ = ["AgentRunner"]
