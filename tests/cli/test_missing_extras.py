"""A command whose optional packages are missing (``pip install -e .`` alone) says which of Castor's extras
installs them, in one line: it said ``No module named 'redis'`` (or ``'mcp_types'``, ``'celery'``) and no more
for the fleet's commands, the MCP gateway, Flower and a Redis store named with ``--store``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fleet  # starts processes

# The packages of the extras, made unimportable as they are in an install without them.
HIDE = ("import sys\nfor name in {names!r}:\n    sys.modules[name] = None\n"
        "from castor.cli import main\nsys.exit(main(sys.argv[1:]))\n")


@pytest.mark.parametrize(
    ("command", "hidden", "extra"),
    [
        (["ps", "--store", "redis://127.0.0.1:1/0"], ["redis"], "redis"),
        (["worker", "--pool", "fs"], ["redis", "celery", "kombu"], "redis"),
        (["coordinator"], ["redis"], "redis"),
        (["flower"], ["celery", "flower"], "celery"),
        (["mcp", "--db", "gateway.db"], ["mcp", "mcp_types"], "mcp"),
    ],
    ids=["ps-on-redis", "worker", "coordinator", "flower", "mcp"],
)
def test_a_missing_extra_is_named_with_its_install_command(
    tmp_path: Path, command: list[str], hidden: list[str], extra: str
) -> None:
    done = subprocess.run([sys.executable, "-c", HIDE.format(names=hidden), *command], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("castor: error: "), done.stderr
    assert f"pip install 'castor-kernel[{extra}]'" in lines[0], done.stderr
