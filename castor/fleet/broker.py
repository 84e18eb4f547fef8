"""The broker's errors in plain words: what failed, on which broker (password hidden), and why.

kombu and py-amqp raise their own types: ``kombu.exceptions.OperationalError`` for a refused or lost
connection, ``amqp.exceptions.AccessRefused`` for a bad login, ``NotAllowed`` for a vhost that does
not exist or that the user may not open. A Castor API raises ``BackendUnavailable`` instead, chained to
the original (``raise broker_error(...) from exc``).

Part of the fleet's supported API (``castor.fleet``).
"""

from __future__ import annotations

from castor._redact import hide_password
from castor.errors import BackendUnavailable


def broker_error(what: str, url: str, exc: BaseException) -> BackendUnavailable:
    """``BackendUnavailable``: ``<what>: the broker at <url> <why>`` (raise it ``from exc``)."""
    return BackendUnavailable(f"{what}: the broker at {hide_password(url)} {_why(exc)}")


def _why(exc: BaseException) -> str:
    from amqp.exceptions import AccessRefused, NotAllowed  # py-amqp comes with kombu, for any broker
    from kombu.exceptions import OperationalError

    if isinstance(exc, AccessRefused):
        return f"refused the login, check the user and password ({exc})"
    if isinstance(exc, NotAllowed):
        return f"refused the connection, check the vhost and the user's permissions on it ({exc})"
    if isinstance(exc, TimeoutError):
        return f"did not answer in time ({exc or type(exc).__name__})"
    if isinstance(exc, OSError | OperationalError):
        return f"is unreachable ({exc})"
    return f"failed: {type(exc).__name__}: {exc}"
