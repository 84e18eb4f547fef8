"""Loading the tools and the agent a fleet process's config or command line names by import spec.

The supported API for fleet processes; the spec forms (``module:function``, ``path/file.py:function``)
and their one parser are the kernel's own, so a worker, a coordinator and the CLI read a spec alike.
"""

from __future__ import annotations

from castor._imports import ImportSpec, load_agent, load_tools, parse_spec, source_of

__all__ = ["ImportSpec", "load_agent", "load_tools", "parse_spec", "source_of"]
