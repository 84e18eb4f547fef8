"""castor-kernel 0.5.1's module path for tools (``castor.gate.registry``, ``.decorator``, ``.validator``).

Thin modules over ``castor.registry``, kept so code written for 0.5.1 imports unchanged.
"""

from castor.registry import SyscallGate, ToolRegistry, castor_tool

__all__ = ["SyscallGate", "ToolRegistry", "castor_tool"]
