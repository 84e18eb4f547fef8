"""castor-kernel 0.5.1's ``castor.gate.decorator``: ``castor_tool`` (``castor.registry.castor_tool``)."""

from castor.registry import castor_tool

__all__ = ["castor_tool"]
