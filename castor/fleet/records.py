"""How the kernel writes a value down, for the fleet processes that must write it the same way.

The supported API for fleet processes. ``canonical`` is the one JSON form in which arguments and results
are compared, hashed and shipped (digests, signatures, the journal); ``redact`` hides a tool's sensitive
arguments for logs and records; ``unique_ids`` makes a generator of process-unique ids (task ids,
receipts); ``function_name`` names a tool's function the same on every machine (what a task says it was
checked against, and a worker compares with its own tool).
"""

from __future__ import annotations

from castor._canonical import canonical
from castor._code import function_name
from castor._ids import unique_ids
from castor._redact import REDACTED, masked, redact, replace_sensitive

__all__ = ["REDACTED", "canonical", "function_name", "masked", "redact", "replace_sensitive", "unique_ids"]
