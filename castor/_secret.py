"""The fleet's secret: coordinators sign every task with it (HMAC-SHA256) and workers run only what it
signed, so a process of the fleet starts only with a secret nobody else can guess.

``require_secret`` is called by every process that signs or verifies tasks before it connects to
anything: ``castor worker``, ``castor coordinator`` with the Celery executor, the
CLI's ``--executor celery`` commands and ``fleet_options`` (all through ``CeleryExecutor.factory``). It
refuses (``InvalidValueError``: the CLI exits 2) no secret, a sample one (``PLACEHOLDERS``) and one
shorter than ``MIN_SECRET_LENGTH`` characters, unless the fleet is an insecure development one
(``[security] insecure_dev = true`` or ``CASTOR_INSECURE_DEV=1``): then it warns on every start.
``castor flower`` signs and verifies nothing and asks for no secret (``castor.fleet.workers.flower``).
"""

from __future__ import annotations

import hashlib
import hmac
import warnings
from typing import Protocol

from castor.errors import CastorWarning, InvalidValueError

MIN_SECRET_LENGTH = 32  # 128 bits as hex; secrets.token_hex(32) gives 64 characters
# Values that sample configs, tutorials and compose files ship; compared stripped and in lower case.
PLACEHOLDERS = frozenset({
    "change-me", "changeme", "change_me", "change me", "changeit", "secret", "my-secret", "mysecret",
    "password", "passwd", "default", "example", "test", "testing", "dev", "development", "castor",
    "castor-secret", "insecure", "xxx", "todo", "replace-me", "replaceme", "none", "null",
})
INSECURE_ENV = "CASTOR_INSECURE_DEV"
GENERATE = 'python -c "import secrets; print(secrets.token_hex(32))"'


def secret_problem(secret: str | None) -> str | None:
    """What is wrong with ``secret`` as a fleet's secret, or None if nothing is."""
    if not secret:
        return "no secret is set ([security] secret or CASTOR_SECRET)"
    if secret.strip().lower() in PLACEHOLDERS:
        return "the secret is a sample value that anyone can read"
    if len(secret) < MIN_SECRET_LENGTH:
        return f"the secret is {len(secret)} characters long, below the minimum of {MIN_SECRET_LENGTH}"
    return None


class SecuritySection(Protocol):
    """What ``require_secret`` reads of the settings' ``[security]`` section."""

    @property
    def secret(self) -> str | None:
        """The fleet's secret, if one is set."""

    @property
    def insecure_dev(self) -> bool:
        """Whether this is an insecure development fleet."""


class SecretSettings(Protocol):
    """What ``require_secret`` reads of ``castor.settings.Settings`` (which imports this module)."""

    @property
    def security(self) -> SecuritySection:
        """The ``[security]`` section."""

    @property
    def source(self) -> str:
        """Where the settings came from (a file, or ``<defaults>``), for messages."""


def require_secret(settings: SecretSettings, process: str) -> None:
    """Stop ``process`` (``castor worker`` ...) unless ``settings`` hold a proper secret; in an insecure
    development fleet, warn instead (every start, so it is never forgotten)."""
    problem = secret_problem(settings.security.secret)
    if problem is None and not settings.security.insecure_dev:
        return
    if not settings.security.insecure_dev:
        raise InvalidValueError(
            f"{settings.source}: {problem}: {process} will not start, as anyone who can write to the broker "
            f"could run tools; generate a secret with {GENERATE} and set CASTOR_SECRET (or [security] secret) "
            f"on every process of the fleet, or set {INSECURE_ENV}=1 for a development fleet"
        )
    why = f"{problem}; " if problem else ""
    warnings.warn(
        f"INSECURE DEVELOPMENT FLEET ({INSECURE_ENV} or [security] insecure_dev in {settings.source}): {why}"
        f"{process} starts anyway; never run it where anyone else can reach the broker",
        CastorWarning,
        stacklevel=2,
    )


def secret_proof(secret: str) -> str:
    """A value that tells whether two processes hold the same secret and says nothing of it (an HMAC of a
    constant under it): coordinators leave theirs in Redis, a worker compares its own at start."""
    return hmac.new(secret.encode(), b"castor: the fleet's signing secret", hashlib.sha256).hexdigest()[:32]


def digests_match(expected: object, given: object) -> bool:
    """Whether ``given`` (whatever a message, a header or a form carried) is the text ``expected``, compared
    in constant time; never raises. ``hmac.compare_digest`` raises ``TypeError`` on a string with a character
    other than ASCII, which anyone who can write a message can send: such a value matches nothing."""
    return (isinstance(expected, str) and isinstance(given, str) and expected.isascii() and given.isascii()
            and hmac.compare_digest(expected, given))
