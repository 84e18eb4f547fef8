"""Castor's Lua scripts, each kept next to the code that owns it, read once and run by its SHA1.

Where they live: the stores' scripts in ``castor/backends/redis/lua/``, the coordinator's ``fleet_*.lua``
in ``scheduler/lua/``, the worker's ``claim.lua`` and ``finish.lua`` in ``workers/lua/`` (each folder is
package data, see ``pyproject.toml``). ``Script.of(package, name)`` reads one; ``functions`` inlines
other scripts' sources as local functions, so a script can reuse a rule (the worker's finish appends
to the journal with the journal's own ``journal_append.lua``).

Running one: ``EVALSHA`` first, and the source loaded (``SCRIPT LOAD``) then ``EVALSHA`` again when the
server does not know it (restart, ``SCRIPT FLUSH``): the script did not run, so that is always safe.
``Script.run`` does it over any synchronous ``execute(*command)`` (the worker's lean socket);
``register`` hands the source to a redis-py client, whose registered scripts do the same (in pipelines
too); ``RedisConnection.script`` does it for the stores, loading every store script at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

__all__ = ["STORE_SCRIPTS", "Script", "forgotten"]


def forgotten(exc: BaseException) -> bool:
    """Whether ``exc`` is the server saying it does not know a script's SHA1 (it did not run)."""
    # redis-py raises its own type (with the code cut off); an error reply on a lean socket keeps the code
    return isinstance(exc, NoScriptError) or str(exc).startswith("NOSCRIPT")


@dataclass(frozen=True, slots=True)
class Script:
    """One Lua script: its ``name``, ``source`` and ``sha`` (the SHA1 of the source, as Redis knows it)."""

    name: str
    source: str
    sha: str

    @classmethod
    def of(cls, package: str, name: str, *, functions: Mapping[str, Script] | None = None) -> Script:
        """``<package>/lua/<name>.lua``, after each of ``functions`` (function name -> script) inlined as
        ``local function <name>() <its source> end`` (its ``KEYS`` and ``ARGV`` are the caller's)."""
        source = (resources.files(package) / "lua" / f"{name}.lua").read_text(encoding="utf-8")
        for function, script in reversed(list((functions or {}).items())):
            source = f"local function {function}()\n{script.source}\nend\n{source}"
        return cls.from_source(name, source)

    @classmethod
    def from_source(cls, name: str, source: str) -> Script:
        """A script made from ``source`` given here."""
        return cls(name, source, hashlib.sha1(source.encode()).hexdigest())

    def command(self, keys: Sequence[str], args: Sequence[Any]) -> tuple[Any, ...]:
        """The ``EVALSHA`` command that runs the script on ``keys`` and ``args``."""
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def run(self, execute: Callable[..., Any], keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The script's reply, through ``execute(*command)``; loaded first if the server forgot it."""
        command = self.command(keys, args)
        try:
            return execute(*command)
        except Exception as exc:
            if not forgotten(exc):
                raise
        execute("SCRIPT", "LOAD", self.source)
        return execute(*command)

    def register(self, client: Any) -> Any:
        """The script registered on a redis-py client: ``script(keys=..., args=..., client=...)``."""
        return client.register_script(self.source)


STORE_NAMES = (
    "journal_append", "journal_fork",
    "budget_open", "budget_charge", "budget_refund", "budget_settle", "budget_reindex", "budget_close", "scope_reset",
    "approval_request", "approval_decide",
    "run_save", "run_prune",
    "task_abandon", "step_claim",
    "llm_ratelimit", "fleet_submit",
)
# The stores' scripts (this package's ``lua/``), read once per process; a server learns them on first use.
STORE_SCRIPTS = {name: Script.of(__package__ or "castor.backends.redis", name) for name in STORE_NAMES}
