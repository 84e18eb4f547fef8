"""Castor's log lines during a one-shot ``castor`` command (services set up their own logging)."""

from __future__ import annotations

import logging
import sys

from castor.cli._escape import shown

# Commands that run until stopped and set up their own logging (timestamps, levels, every logger).
SERVICES = frozenset({"coordinator", "worker", "flower", "console", "mcp"})


class CommandLog(logging.Handler):
    """Castor's warnings during a one-shot command, as ``castor: warning: ...`` lines on stderr, without the
    line a run's end is logged with (the command prints the outcome itself; it came a second time)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record, unless it is a run's end."""
        if getattr(record, "castor_run_end", False):
            return
        try:
            sys.stderr.write(f"castor: {record.levelname.lower()}: {shown(record.getMessage())}\n")
        except Exception:  # a closed stderr: nothing else to tell
            self.handleError(record)


def command_log(command: str | None) -> None:
    """Give a one-shot command ``CommandLog`` unless logging is set up already (a host program's)."""
    castor_log = logging.getLogger("castor")
    if command in SERVICES or logging.getLogger().handlers or castor_log.handlers:
        return
    castor_log.addHandler(CommandLog())  # a handler found: Python's last-resort one no longer prints it
