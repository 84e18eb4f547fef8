"""castor-kernel 0.5.1's ``castor.scheduler.hitl``: ``HITLHandler`` (refuses use: decide with
``kernel.approve`` / ``reject`` / ``modify``; see ``castor.compat``)."""

from castor.compat import HITLHandler

__all__ = ["HITLHandler"]
