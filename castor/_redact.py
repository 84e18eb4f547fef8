"""Sensitive arguments hidden wherever a call is shown or recorded outside the tool itself: task listings,
logs, failure records; and the password of a server URL wherever one is shown (``hide_password``).
Both the kernel and the executors use it, so it depends on neither.

A name a tool declares sensitive matches at any depth: the value of every key of that name, in the
arguments or in any dict nested in them (through lists too), is hidden whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "***"
# The query options of a server URL that hold a password: redis-py's, and a Sentinel's own
# (``castor.backends.redis.sentinel``).
_PASSWORD_OPTIONS = frozenset({"password", "sentinel_password"})
# What a sealed value (``castor._sealing``) starts with: a keyed digest or a ciphertext, never the value.
SEALED_MARK = "***"


def redact(arguments: dict[str, Any], sensitive: frozenset[str] | set[str]) -> dict[str, Any]:
    """The arguments with sensitive values replaced, for task listings, logs and failure records."""
    if not sensitive:
        return arguments
    return replace_sensitive(arguments, sensitive, _hidden)


def _hidden(_: Any) -> str:
    return REDACTED


def replace_sensitive(value: Any, sensitive: frozenset[str] | set[str], change: Callable[[Any], Any]) -> Any:
    """``value`` with ``change(v)`` in place of every value ``v`` held under a sensitive key, at any depth
    of dicts and lists (a sensitive value is changed whole: nothing under it is walked)."""
    if isinstance(value, dict):
        return {
            k: (change(v) if k in sensitive else replace_sensitive(v, sensitive, change)) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [replace_sensitive(v, sensitive, change) for v in value]
    return value


def masked(value: Any) -> Any:
    """``value`` as a human sees it: every sealed value (a digest or a ciphertext) shown as ``***``."""
    if isinstance(value, str):
        return REDACTED if value.startswith(SEALED_MARK) else value
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [masked(v) for v in value]
    return value


def hide_password(url: str) -> str:
    """``url`` with its password (in the authority or the query) replaced by ``***``: the one way a server
    URL (Redis, a broker) is shown in errors, logs and listings."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, sep, _secret = userinfo.partition(":")
        # ``user:password@`` keeps the user; a lone ``secret@`` may be a password: hide it whole
        netloc = f"{user}:***@{host}" if sep else f"***@{host}"
    query = urlencode([(k, "***" if k in _PASSWORD_OPTIONS else v) for k, v in parse_qsl(parts.query)], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))
