"""Who is asking, and may they: tokens, signed session cookies, roles and CSRF.

A request is signed in by an ``Authorization: Bearer <token>`` header (the API) or by the session cookie
the sign-in form sets (the pages). A token is one of ``[[console.users]]``; the user's name is what the
journal records as ``decided_by``. With no users configured (only allowed on a loopback address) every
request is the OS user, as admin: a console on a laptop for its owner.

CSRF: every form carries the value of the ``castor_csrf`` cookie (double submit) and a POST whose field
does not match it is refused. A script posts to the JSON API instead, which needs no token: its POSTs
must be ``application/json``, which no page of another site can send (``castor.console.api``). Both
cookies are ``SameSite=Strict``. A request with a bearer token is not a browser's and needs neither.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from castor._secret import digests_match
from castor.kernel.approvals import default_user
from castor.settings._console import ConsoleSection, Role, at_least, decides

SESSION_COOKIE = "castor_session"
CSRF_COOKIE = "castor_csrf"
CSRF_FIELD = "csrf"
SESSION_SECONDS = 12 * 3600


class Denied(Exception):
    """The request may not do this: ``status`` 401 (who are you?), 403 (not you), 404 (no such thing), 415
    (not JSON)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Identity:
    """A signed-in user: name (the journal's ``decided_by``), role, and the tools they may decide."""

    name: str
    role: Role
    tools: frozenset[str] = frozenset()
    bearer: bool = False  # signed in by a token header (a program), not by a browser session

    def may(self, role: Role) -> bool:
        """Whether the identity has ``role`` or a higher one."""
        return at_least(self.role, role)

    def may_decide(self, tool: str) -> bool:
        """Whether the identity may decide a call to ``tool``."""
        return decides(self.role, self.tools, tool)

    def require(self, role: Role) -> None:
        """``Denied`` (403) unless the identity has ``role``."""
        if not self.may(role):
            article = "an" if self.role[:1] in "aeiou" else "a"
            raise Denied(403, f"{self.name} is {article} {self.role}; this needs the {role} role")


class Gate:
    """Checks tokens and session cookies against ``[console] users``."""

    def __init__(self, settings: ConsoleSection, key: bytes | None = None) -> None:
        self.users = {u.name: u for u in settings.users}
        # Sessions are signed with a key of this process: a restart signs everyone out, and no key is stored.
        self._key = key or secrets.token_bytes(32)

    @property
    def open(self) -> bool:
        """No users configured: everyone is the OS user, as admin (loopback only; the CLI checks)."""
        return not self.users

    def by_token(self, token: str) -> Identity | None:
        """The user whose token this is, compared in constant time."""
        for user in self.users.values():
            if hmac.compare_digest(user.token.encode(), token.encode()):
                return Identity(user.name, user.role, user.tools)
        return None

    def identify(self, authorization: str | None, session: str | None) -> Identity | None:
        """The identity of a request: its bearer token, else its session cookie, else None."""
        if self.open:
            return Identity(default_user(), "admin")
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Denied(401, "the Authorization header must be 'Bearer <token>'")
            found = self.by_token(token.strip())
            if found is None:
                raise Denied(401, "unknown token")
            return Identity(found.name, found.role, found.tools, bearer=True)
        if session:
            name = self.unseal(session)
            user = self.users.get(name or "")
            if user is not None:
                return Identity(user.name, user.role, user.tools)
        return None

    def seal(self, name: str, now: float | None = None) -> str:
        """A session cookie value for ``name``: ``<name>|<expiry>|<mac>``, base64."""
        expiry = int((now or time.time()) + SESSION_SECONDS)
        body = f"{name}|{expiry}".encode()
        mac = hmac.new(self._key, body, hashlib.sha256).hexdigest()
        return base64.urlsafe_b64encode(body + b"|" + mac.encode()).decode()

    def unseal(self, value: str, now: float | None = None) -> str | None:
        """The name a session cookie holds, if it is ours and not expired."""
        try:
            raw = base64.urlsafe_b64decode(value.encode())
            body, _, mac = raw.rpartition(b"|")
            name, _, expiry = body.decode().rpartition("|")
            good = hmac.new(self._key, body, hashlib.sha256).hexdigest().encode()
            if hmac.compare_digest(good, mac) and int(expiry) > (now or time.time()):
                return name
        except (ValueError, UnicodeDecodeError):
            return None
        return None


def new_csrf() -> str:
    """A fresh CSRF token for the double-submit cookie."""
    return secrets.token_urlsafe(24)


def csrf_ok(cookie: str | None, submitted: str | None) -> bool:
    """Whether the submitted token matches the cookie (both present)."""
    return bool(cookie) and bool(submitted) and digests_match(cookie, submitted)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is an address only this machine reaches."""
    import ipaddress

    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
