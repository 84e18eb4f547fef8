"""Canonical JSON: the one form in which arguments and results are compared, hashed and shipped."""

from __future__ import annotations

import json
from typing import Any


def _default(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def canonical(value: Any) -> str:
    """``value`` as compact JSON with sorted keys (tuples become lists, as in any JSON round trip)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_default)

