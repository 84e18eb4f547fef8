"""castor-kernel 0.5.1's module path for budgets (``castor.capability.manager``).

Budgets here are kept by the kernel's store; 0.5.1's ``CapabilityManager`` imports but refuses use,
naming what to use instead (see ``castor.compat``).
"""

from castor.compat import CapabilityManager

__all__ = ["CapabilityManager"]
