"""``castor flower``: Flower on the fleet's app, so every task shows as ``castor.tool.<tool>``."""

from __future__ import annotations

import os

from castor.fleet.sealing import require_secret
from castor.settings import Settings

from .app import make_app


def flower_argv(settings: Settings, port: int | None = None, address: str = "127.0.0.1") -> list[str]:
    """The ``celery flower`` arguments."""
    argv = ["flower", f"--port={port or settings.flower.port}", f"--address={address}"]
    if settings.flower.basic_auth:
        argv.append(f"--basic-auth={settings.flower.basic_auth}")
    return argv


def run_flower(settings: Settings, port: int | None = None, address: str = "127.0.0.1") -> None:
    """Start Flower in this process and serve until it is stopped.

    Flower 2 serves its HTTP API only with authentication configured, unless told otherwise: without
    ``[flower] basic_auth`` it listens on ``address`` (loopback by default) with the API open.
    """
    require_secret(settings, "castor flower")
    if not settings.flower.basic_auth:
        os.environ.setdefault("FLOWER_UNAUTHENTICATED_API", "true")
    app = make_app(settings)
    app.start(flower_argv(settings, port, address))
