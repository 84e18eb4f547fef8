"""castor-kernel 0.5.1's ``castor.capability.manager``: ``CapabilityManager`` (refuses use; see ``castor.compat``)."""

from castor.compat import CapabilityManager

__all__ = ["CapabilityManager"]
