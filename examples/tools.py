"""An example tool beside ``fleet_tools.py``: it hands out a unique ticket per call.

An agent must make the same calls when it is replayed, so it cannot draw a random name itself; a
tool's result is journaled, so a ticket drawn through a tool is the same on every replay.
"""

from __future__ import annotations

import uuid


def open_ticket() -> str:
    """A fresh ticket id (runs on the ``web`` pool)."""
    return uuid.uuid4().hex[:12]
