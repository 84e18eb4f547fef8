"""Cheap unique ids: a random prefix per source, then a counter (no ``uuid4`` per id)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable


def unique_ids(*, compact: bool = False) -> Callable[[], str]:
    """A source of ids unique across processes without a ``uuid4`` (and its ``urandom`` call) each: a
    random prefix per source, then a counter. Shaped like ``str(uuid4())``, or ``compact`` (hex, short)."""
    rand = uuid.uuid4().hex
    counter = itertools.count()
    if compact:
        head = rand[:12]
        return lambda: f"{head}{next(counter):x}"
    head = f"{rand[:8]}-{rand[8:12]}-{rand[12:16]}-{rand[16:20]}-"
    return lambda: f"{head}{next(counter):012x}"
