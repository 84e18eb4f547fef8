"""How deep a message nests: a prefork pool pickles each request for its child, headers and properties with
the body, and pickling one nested near Python's recursion limit (about 950 levels of lists and objects,
still JSON a worker decodes) raised ``RecursionError``; a few such messages later the pool took no more
tasks. Whatever nests deeper than ``MAX_NESTING`` is refused before Celery takes it (``_poison``,
``_envelopes``)."""

from __future__ import annotations

from typing import Any

MAX_NESTING = 100  # levels of lists and objects a message may nest: Castor's, a conversation's included, far fewer


class TooDeep(ValueError):
    """What a message nested deeper than ``MAX_NESTING`` levels is refused for."""


def nests_deeper(raw: Any, value: Any, limit: int) -> bool:
    """Whether ``value`` (decoded from ``raw``, its JSON text) nests lists and objects deeper than ``limit``
    levels. A text with fewer opening brackets cannot: most bodies are told so by two counts in C; others
    are walked without recursion, whatever their depth."""
    if isinstance(raw, bytes):
        opened = raw.count(b"[") + raw.count(b"{")
    else:
        opened = raw.count("[") + raw.count("{") if isinstance(raw, str) else limit + 1
    if opened <= limit:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list | tuple))
    return False


def headers_nest_deeper(headers: dict[str, Any], limit: int) -> bool:
    """Whether a header value nests deeper than ``limit`` levels (most are text, a few short lists)."""
    for value in headers.values():
        if type(value) in (dict, list) and value and nests_deeper(None, value, limit - 1):
            return True
    return False
