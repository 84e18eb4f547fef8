"""Sensitive values kept out of every store and message, yet usable by the processes that need them.

A value held under a name its tool declares sensitive (at any depth, see ``castor._redact``) is sealed
one of two ways, both under the store's ``DataKey``:

- **digested** (``***hmac:<key id>:<hex>``): an HMAC-SHA256 of its canonical JSON. The journal's request
  keeps this: replay compares a call with its record by digest, and nothing needs the value back. A
  digest made under another key (a checkpoint's JSON resumed on another store) cannot be compared: replay
  then compares the rest of the call only.
- **encrypted** (``***aead:<base64>``): AES-256-GCM with a random nonce (``cryptography``). A pending
  call keeps this in its checkpoint and its approval row (``approve`` may execute it in another process),
  and a fleet task carries it across the broker (the worker decrypts it just before calling the tool).

Where the key comes from:

- a SQLite store: ``$CASTOR_DATA_KEY`` if set, else the key file ``<database>.key`` next to the database,
  created (mode 0600) on first use; whoever can read that file can read the sealed values.
- a Redis store and the fleet: derived (HKDF-SHA256) from the fleet's secret; without one from
  ``$CASTOR_DATA_KEY``; without either a fixed development key, which hides values from a glance and
  nothing more.
- the memory store (the Python API's default): ``$CASTOR_DATA_KEY``, else the development key, so that a
  checkpoint's JSON (which carries its pending call) can be approved in another process; set
  ``$CASTOR_DATA_KEY`` to protect the values in that JSON.

Changing the key (or the fleet's secret) makes runs stored under the old one unable to replay a sensitive
call (a divergence) or to execute a pending one (a clear error): finish or drop them first.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from castor._canonical import canonical
from castor._redact import replace_sensitive
from castor.errors import CastorError

KEY_ENV = "CASTOR_DATA_KEY"
DIGEST_MARK, CIPHER_MARK = "***hmac:", "***aead:"
_DEV_KEY = "castor development key: not a secret"
log = logging.getLogger("castor.sealing")


class SealError(CastorError):
    """A sealed value this process cannot open: another key sealed it, or it was altered."""


def _derive(material: bytes, info: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)


class DataKey:
    """The key sealing sensitive values; its material is loaded on first use (``load`` returns it)."""

    def __init__(self, load: Callable[[], bytes], source: str) -> None:
        self._load = load
        self.source = source
        self._keys: tuple[bytes, Any] | None = None
        self._key_id = ""
        self._lock = threading.Lock()

    @classmethod
    def from_secret(cls, secret: str, source: str = "secret") -> DataKey:
        """The key derived from a secret string (the fleet's secret, ``$CASTOR_DATA_KEY``)."""
        return cls(lambda: secret.encode(), source)

    @classmethod
    def ephemeral(cls) -> DataKey:
        """A random key, for a store that lives no longer than its process."""
        material = os.urandom(32)
        return cls(lambda: material, "ephemeral")

    @classmethod
    def for_fleet(cls, secret: str | None) -> DataKey:
        """The fleet's key: from its secret, else ``$CASTOR_DATA_KEY``, else the development key."""
        if secret:
            return cls.from_secret(secret)
        env = os.environ.get(KEY_ENV)
        if env:
            return cls.from_secret(env, KEY_ENV)
        return cls.from_secret(_DEV_KEY, "development")

    @classmethod
    def for_process(cls) -> DataKey:
        """The memory store's key: ``$CASTOR_DATA_KEY``, else the development key (silently: the store
        keeps nothing outside the process)."""
        env = os.environ.get(KEY_ENV)
        return cls.from_secret(env, KEY_ENV) if env else cls.from_secret(_DEV_KEY, "process")

    @classmethod
    def for_file(cls, database: str) -> DataKey:
        """A SQLite store's key: ``$CASTOR_DATA_KEY``, else ``<database>.key`` (made on first use)."""
        env = os.environ.get(KEY_ENV)
        if env:
            return cls.from_secret(env, KEY_ENV)
        if database == ":memory:":
            return cls.ephemeral()
        path = f"{database}.key"
        return cls(lambda: _key_file(path), path)

    def _subkeys(self) -> tuple[bytes, Any]:
        if self._keys is None:
            with self._lock:
                if self._keys is None:
                    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

                    material = self._load()
                    if self.source == "development":
                        log.warning("sensitive values are sealed with the development key: set a fleet secret "
                                    "or %s to protect them", KEY_ENV)
                    mac = _derive(material, b"castor digest")
                    self._key_id = hmac.digest(mac, b"castor key id", "sha256")[:4].hex()
                    self._keys = (mac, AESGCM(_derive(material, b"castor aead")))
        return self._keys

    @property
    def key_id(self) -> str:
        """Names the key in its digests (a hash of it, not the key)."""
        self._subkeys()
        return self._key_id

    def digest(self, value: Any) -> str:
        """A keyed digest of ``value``: equal for equal values, and nothing of the value."""
        mac = hmac.digest(self._subkeys()[0], canonical(value).encode(), "sha256")
        return f"{DIGEST_MARK}{self._key_id}:{mac[:16].hex()}"

    def encrypt(self, value: Any) -> str:
        """``value`` encrypted (a sealed value stays as it is)."""
        if isinstance(value, str) and value.startswith(CIPHER_MARK):
            return value
        nonce = os.urandom(12)
        sealed = self._subkeys()[1].encrypt(nonce, canonical(value).encode(), None)
        return CIPHER_MARK + base64.urlsafe_b64encode(nonce + sealed).decode()

    def decrypt(self, value: Any) -> Any:
        """An encrypted value opened (anything else as it is); ``SealError`` if this key cannot open it."""
        if not (isinstance(value, str) and value.startswith(CIPHER_MARK)):
            return value
        from cryptography.exceptions import InvalidTag

        try:
            raw = base64.urlsafe_b64decode(value[len(CIPHER_MARK) :].encode())
            plain = self._subkeys()[1].decrypt(raw[:12], raw[12:], None)
        except (InvalidTag, ValueError) as exc:
            raise SealError(
                f"cannot decrypt a sensitive value: it was sealed under another key than this process's "
                f"({self.source}) or altered"
            ) from exc
        return json.loads(plain)


def _key_file(path: str) -> bytes:
    """The key in ``path``, which is created (0600, never overwritten) if it does not exist."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as out:
            out.write(os.urandom(32).hex() + "\n")
    with open(path) as source:
        text = source.read().strip()
    if len(text) < 32:
        raise SealError(f"data key file {path!r} is empty or too short: restore it or remove it with its database")
    return text.encode()


def digested(arguments: dict[str, Any], sensitive: frozenset[str], key: DataKey) -> dict[str, Any]:
    """The arguments as the journal keeps them: sensitive values as keyed digests."""
    if not sensitive:
        return arguments
    return replace_sensitive(arguments, sensitive, key.digest)


def foreign_digests(value: Any, key: DataKey) -> bool:
    """Whether ``value`` holds a digest made under another key than ``key``."""
    if isinstance(value, str):
        if not value.startswith(DIGEST_MARK):
            return False
        return not value.startswith(f"{DIGEST_MARK}{key.key_id}:")
    if isinstance(value, dict):
        return any(foreign_digests(v, key) for v in value.values())
    if isinstance(value, list | tuple):
        return any(foreign_digests(v, key) for v in value)
    return False


def encrypted(arguments: dict[str, Any], sensitive: frozenset[str], key: DataKey) -> dict[str, Any]:
    """The arguments as a pending call or a task keeps them: sensitive values encrypted."""
    if not sensitive:
        return arguments
    return replace_sensitive(arguments, sensitive, key.encrypt)


def opened(arguments: dict[str, Any], sensitive: frozenset[str], key: DataKey) -> dict[str, Any]:
    """The arguments with their encrypted sensitive values decrypted (``SealError`` if one cannot be)."""
    if not sensitive:
        return arguments
    return replace_sensitive(arguments, sensitive, key.decrypt)
