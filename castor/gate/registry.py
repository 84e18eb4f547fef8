"""castor-kernel 0.5.1's ``castor.gate.registry``: the tool registry (``castor.registry.ToolRegistry``).

0.5.1's ``default_registry`` (every ``@castor_tool`` without ``registry=``, picked up by a bare
``Castor()``) is not provided: pass tools with ``Castor(tools=...)`` or a ``ToolRegistry`` you create.
"""

from castor.errors import UnknownToolError as ToolNotFoundError
from castor.registry import ToolMetadata, ToolRegistry

__all__ = ["ToolMetadata", "ToolNotFoundError", "ToolRegistry"]
