"""Example tools: plain functions that know nothing of Castor.

``search`` and ``fetch`` run on the ``web`` pool, ``write_file`` and ``delete_file`` on the ``fs`` pool
(see ``config/castor.toml``). The file tools work inside one sandbox directory,
``$CASTOR_EXAMPLE_DIR`` (default: ``/tmp/castor-examples``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def _sandbox(name: str) -> Path:
    root = Path(os.environ.get("CASTOR_EXAMPLE_DIR", "/tmp/castor-examples"))
    root.mkdir(parents=True, exist_ok=True)
    path = (root / name).resolve()
    if root.resolve() not in path.parents:
        raise ValueError(f"{name!r} is outside the sandbox {root}")
    return path


def search(query: str) -> list[str]:
    """Pretend to search the web: three result names for the query."""
    time.sleep(0.01)
    slug = "-".join(query.lower().split())[:40]
    return [f"{slug}-{i}.log" for i in range(3)]


def fetch(url: str) -> dict[str, object]:
    """Pretend to fetch a page: its size."""
    time.sleep(0.01)
    return {"url": url, "bytes": 1024 + len(url)}


def write_file(name: str, content: str) -> str:
    """Write a file in the sandbox."""
    path = _sandbox(name)
    path.write_text(content)
    return f"wrote {len(content)} bytes to {path.name}"


def delete_file(name: str) -> str:
    """Delete a file in the sandbox (destructive: the operator makes it wait for approval)."""
    path = _sandbox(name)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return f"deleted {path.name}" if existed else f"{path.name} was not there"
