"""The fleet's shared secret, and the sealing of sensitive arguments with the key derived from it.

The supported API for fleet processes. ``require_secret`` refuses to start a fleet process whose config
has no usable secret (unless it declares itself insecure). ``DataKey`` is the key derived from the secret;
``opened`` decrypts the sensitive arguments a coordinator sealed for the worker that runs the tool, and
raises ``SealError`` when they were sealed under another key. ``secret_proof`` tells whether two processes
hold the same secret without saying anything of it.
"""

from __future__ import annotations

from castor._sealing import DataKey, SealError, opened
from castor._secret import require_secret, secret_proof

__all__ = ["DataKey", "SealError", "opened", "require_secret", "secret_proof"]
