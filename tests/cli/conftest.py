"""CLI test helpers: a scratch working directory with an agent and tools written as files, and ``cli``,
which runs ``castor`` in process and returns the exit code, stdout and stderr.

The tools append one line per execution to ``calls.log`` beside them, so what really ran can be
counted from any process.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from castor.cli import main

TOOLS = '''
from pathlib import Path

LOG = Path(__file__).with_name("calls.log")


def _count(name):
    with LOG.open("a") as log:
        log.write(name + "\\n")


async def search(query: str) -> list:
    _count("search")
    return ["/tmp/old1", "/tmp/old2"]


async def delete_file(path: str) -> str:
    _count("delete_file")
    return f"Deleted {path}"


def broken(path: str) -> str:
    _count("broken")
    raise OSError(f"disk on fire: {path}")
'''

AGENTS = '''
from castor.lib import tool


async def cleanup():
    paths = await tool("search", query="old logs")
    done = []
    for path in paths:
        answer = await tool("delete_file", path=path)
        done.append(answer if isinstance(answer, str) else answer["status"])
    return "Cleaned up: " + ", ".join(done)


async def main():
    return await cleanup()


async def calls_unknown():
    await tool("search", query="x")
    await tool("format_disk", device="/dev/sda")


async def raises():
    await tool("search", query="x")
    raise ValueError("agent bug")


async def uses_broken():
    await tool("broken", path="/tmp/x")
    return "never"
'''


@dataclass
class Result:
    """What one ``castor`` invocation did."""

    code: int
    out: str
    err: str

    @property
    def pid(self) -> str:
        """The pid a run command printed."""
        for line in self.out.splitlines():
            if line.startswith("PID:    "):
                return line.split(maxsplit=1)[1]
        raise AssertionError(f"no PID line in:\n{self.out}")


Cli = Callable[..., Result]


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run every CLI test in a scratch directory with no store in the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CASTOR_STORE", raising=False)
    monkeypatch.delenv("CASTOR_REDIS_URL", raising=False)
    (tmp_path / "tools.py").write_text(textwrap.dedent(TOOLS))
    (tmp_path / "agents.py").write_text(textwrap.dedent(AGENTS))
    return tmp_path


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``castor *args`` in this process."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def calls(workdir: Path) -> list[str]:
    """The tools' executions so far, in order."""
    log = workdir / "calls.log"
    return log.read_text().split() if log.exists() else []


RUN = ("run", "agents.py:cleanup", "--tool", "tools.py:search", "--tool", "tools.py:delete_file", "--destructive")
