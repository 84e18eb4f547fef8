"""JSON documents rendered from a template: ``json.dumps``'s exact output, for a fraction of its work.

A task message is some forty fields of which a handful change from one task to the next. ``Template``
encodes the document once with a placeholder (``slot(name)``) wherever a value varies, and cuts the
text at the placeholders; a message is then its constant parts joined with the encoded values. The
output is what ``json.dumps`` (default separators, ``ensure_ascii``) gives for the same document:
``tests/celery/test_template.py`` checks it, and ``test_publish.py`` compares whole messages with
``send_task``'s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii as quote  # what json.dumps itself quotes strings with
from typing import Any

# A placeholder is a whole JSON string: a slot's name between NUL characters, which JSON escapes as
# \u0000. Only the names a template is given are cut at, and only as a whole string (quote to quote):
# a constant that merely holds NULs, or a backslash (escaped as \\), is left as it is.
_MARK = "\x00"


def slot(name: str) -> str:
    """The placeholder for the value ``name`` (an identifier) in a template's document."""
    if not name.isidentifier():
        raise ValueError(f"a slot is named by an identifier, not {name!r}")
    return f"{_MARK}{name}{_MARK}"


def value(item: Any) -> str:
    """``item`` as JSON, the way ``json.dumps`` writes it inside a document."""
    return quote(item) if type(item) is str else json.dumps(item)


class Template:
    """``document`` with its slots filled by ``render``: values given in the order of ``names``,
    already encoded (``value()``, or ``quote()`` for a string); a slot may appear several times."""

    __slots__ = ("_order", "_parts")

    def __init__(self, document: Any, names: Sequence[str]) -> None:
        text = json.dumps(document)
        index = {name: i for i, name in enumerate(names)}
        marks = "|".join(re.escape(slot(name).strip(_MARK)) for name in names)
        pieces = re.split(rf'"\\u0000({marks})\\u0000"', text)  # constant, name, constant, ..., name, constant
        self._parts = pieces[::2]
        self._order = [index[name] for name in pieces[1::2]]
        missing = set(names) - set(pieces[1::2])
        if missing:
            raise ValueError(f"slots {sorted(missing)} are not in the document")

    def render(self, values: Sequence[str]) -> str:
        """The document with ``values`` (encoded JSON) in its slots."""
        parts = self._parts
        out = [parts[0]]
        for n, i in enumerate(self._order, 1):
            out.append(values[i])
            out.append(parts[n])
        return "".join(out)
