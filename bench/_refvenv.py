"""The published castor-kernel 0.5.1, installed in a venv of its own that only the benchmarks use.

It cannot share the project's venv: both install the import name ``castor``. The venv lives in
``bench/.refvenv`` (git-ignored) and is created on first use with ``python -m venv`` and ``pip``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REFERENCE = "castor-kernel==0.5.1"
REFERENCE_VERSION = "0.5.1"
VENV = Path(__file__).resolve().parent / ".refvenv"


def python_of(venv: Path) -> Path:
    """The interpreter of ``venv`` (POSIX or Windows layout)."""
    posix = venv / "bin" / "python"
    return posix if posix.exists() else venv / "Scripts" / "python.exe"


def installed_version(python: Path) -> str | None:
    """The castor version that ``python`` imports, or None if it imports none."""
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import castor; print(castor.__version__)"],
        capture_output=True, text=True, env=clean_env(), cwd=VENV.parent, check=False,  # bench/ has no castor/
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def clean_env() -> dict[str, str]:
    """The environment without anything that would put this project's ``castor`` on the path."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


def ensure(log: bool = True) -> Path:
    """The reference venv's interpreter, creating the venv and installing 0.5.1 if needed."""
    python = python_of(VENV)
    if installed_version(python) == REFERENCE_VERSION:
        return python
    if log:
        print(f"creating {VENV} with {REFERENCE} (once; it is git-ignored) ...", file=sys.stderr, flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        python = python_of(VENV)
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", REFERENCE],
        capture_output=True, text=True, env=clean_env(), check=False,
    )
    if pip.returncode != 0:
        raise RuntimeError(f"pip install {REFERENCE} failed:\n{pip.stdout}{pip.stderr}")
    version = installed_version(python)
    if version != REFERENCE_VERSION:
        raise RuntimeError(f"{VENV} imports castor {version!r}, expected {REFERENCE_VERSION}")
    return python
