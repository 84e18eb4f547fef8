"""One helper the CLI's text output calls on whatever it read back from a store (pids, tool names,
reasons, who decided, error messages): a value that holds a newline, a carriage return or a terminal
escape sequence must not draw a fake row or recolour the terminal.

Control characters (C0, DEL, C1), line and paragraph separators and the bidirectional overrides are
shown as Python-style escapes (``\\n``, ``\\x1b``, ``\\u202e``); every other character as it is. JSON
output needs none of this: ``json.dumps`` escapes them already.

A value nobody vetted (a dead letter's headers: whoever could write to the broker chose them) is shown
``ascii_only``: every character outside printable ASCII escaped and backslashes doubled. A homoglyph
(Cyrillic ``с`` in ``castor.tool.search``), an invisible format character (a zero-width space) or a wide
one then cannot pass for a real task or run name or push a table's columns, and an escape on the screen
is never text that only looks like one. Names Castor stores itself (pids are validated at creation) keep
their letters.
"""

from __future__ import annotations

import unicodedata
from typing import Any

# Format characters that reorder what follows them on the screen (a "Trojan Source" line).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(value: Any, *, ascii_only: bool = False) -> str:
    """``value`` as text safe to print on one line of a terminal (``None`` stays ``"None"``); with
    ``ascii_only``, nothing but printable ASCII (see the module docstring)."""
    text = value if isinstance(value, str) else str(value)
    if ascii_only:
        return text.encode("unicode_escape").decode("ascii")
    if text.isprintable():  # the common case: nothing to do (isprintable is False for every unsafe char)
        return text
    return "".join(_escape(c) if _unsafe(c) else c for c in text)
