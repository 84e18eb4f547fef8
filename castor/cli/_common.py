"""What every CLI command shares: the global options, the store a command talks to, and the kernel
opened on it.

The store is chosen once per command, in this order: ``--store URL``, ``--redis URL``, ``--db PATH``
(only one of them), then the environment (``CASTOR_STORE``, then ``CASTOR_REDIS_URL``), then
``./castor.db``. Runs started by one command are seen by every later command on the same store.
"""

from __future__ import annotations

import argparse
import os
import shlex
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from castor._redact import hide_password
from castor.backends import open_backend, sqlite_file
from castor.cli._args import add_option
from castor.cli._celery_cmds import executor_flags
from castor.cli._stores import DEFAULT_DB, given_stores, store_url
from castor.errors import ConfigError
from castor.kernel import Castor, CastorWarning
from castor.seams import Backend


def add_global_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """The options every command accepts, before or after its name.

    On a subcommand they default to ``SUPPRESS`` so that an option given before the subcommand is not
    overwritten by the subcommand's default.
    """
    default: Any = None if top_level else argparse.SUPPRESS
    options: list[tuple[str, dict[str, Any]]] = [
        ("--db", {"metavar": "PATH", "help": f"SQLite file holding run state (default ./{DEFAULT_DB})"}),
        ("--store", {"metavar": "URL", "help": "any store URL: memory://, sqlite:///path.db, redis://host:port/0"}),
        ("--redis", {"metavar": "URL", "help": "shorthand for --store redis://..."}),
    ]
    for flag, kwargs in options:  # each unless a command module defined its own option of that name
        add_option(parser, flag, default=default, **kwargs)
    # Every command takes --config (the fleet's Redis, for a command that reads runs); unset unless given,
    # so a command that never looked for a config does not start looking for one.
    add_option(parser, "--config", default=argparse.SUPPRESS, metavar="FILE",
               help="the fleet's config (castor.toml): its [redis] url and prefix are the store")
    add_option(
        parser, "--debug", action="store_true", default=False if top_level else argparse.SUPPRESS,
        help="show tracebacks instead of one-line errors",
    )


def store_flags(args: argparse.Namespace) -> str:
    """The store option to repeat in a command we tell the user to type (empty for the default)."""
    given = given_stores(args)
    return " ".join(f"{flag} {shlex.quote(value)}" for flag, value in given[:1])


def command(args: argparse.Namespace, *words: str) -> str:
    """A command line the user can paste: ``castor <words> [store option] [executor options]``."""
    options = " ".join(part for part in (store_flags(args), executor_flags(args)) if part)
    line = " ".join(["castor", *(shlex.quote(w) for w in words)])
    return f"{line} {options}" if options else line


def open_store(args: argparse.Namespace, *, existing: bool = False) -> Backend:
    """The backend of this command's store. ``existing``: a command that only reads or decides what is
    stored (``ps``, ``inspect``, ``approve``...) makes no SQLite file (nor its directory) that is not there:
    it reads an empty store (``args.missing_store`` names the file)."""
    url = store_url(args)
    path = sqlite_file(url) if existing else None
    if path is not None and not os.path.exists(path):
        from castor.backends.memory import memory_backend

        args.missing_store = path  # ``ps`` says so when it lists nothing
        return memory_backend()
    try:
        return open_backend(url)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("castor"):
            raise ConfigError(
                f"store {hide_password(url)!r} is not supported by this installation ({exc.name} is missing)"
            ) from exc
        raise ConfigError(
            f"store {hide_password(url)!r} needs the optional package {exc.name!r}: "
            "pip install 'castor-kernel[redis]'"
        ) from exc


def bare_kernel(backend: Backend) -> Castor:
    """A kernel with no tools: enough to list, load and inspect runs."""
    return Castor(store=backend)


@contextmanager
def warnings_to_stderr(err: Any) -> Iterator[None]:
    """Show the kernel's configuration warnings as ``castor: warning: ...`` lines, not as Python warnings."""

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        err.write(f"castor: warning: {message}\n")

    with warnings.catch_warnings():
        warnings.simplefilter("always", CastorWarning)
        warnings.showwarning = show
        yield
