"""castor-kernel 0.5.1's module path of its in-memory driver."""

from castor.mmu.drivers.memory import InMemoryDriver

__all__ = ["InMemoryDriver"]
