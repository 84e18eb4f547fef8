"""The allowed range of every numeric setting and numeric command-line option, declared once.

``castor.settings.Settings`` checks its fields against ``SETTINGS`` (so a ``castor.toml``, the
environment and ``Settings(...)`` in Python all meet the same rule); the CLI's number options take
their argparse type from ``OPTIONS`` (``option_type``). A value out of range is an
``InvalidValueError`` naming the key, where it came from and the range; the CLI exits 2 on it.

Upper bounds keep arithmetic sane (``retry_backoff * 2**max_retries`` must stay a number) and catch
typos (a port of 99999); they are far above what a fleet needs.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from castor._errors import InvalidValueError

DAY = 86400.0


@dataclass(frozen=True)
class Limit:
    """A closed range ``[low, high]`` (``low`` itself excluded when ``above``), of integers or numbers."""

    low: float
    high: float
    integer: bool = False
    above: bool = False

    def allows(self, value: Any) -> bool:
        """Whether ``value`` is a number (an integer if need be, never a bool) in the range."""
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return False
        if self.integer and not isinstance(value, int):  # 4.0 would reach range() and Celery's argv as a float
            return False
        return (value > self.low if self.above else value >= self.low) and value <= self.high

    def describe(self) -> str:
        """``an integer from 1 to 65535``, ``a number above 0 and at most 2592000``."""
        kind = "an integer" if self.integer else "a number"
        low, high = _number(self.low), _number(self.high)
        if self.above:
            return f"{kind} above {low} and at most {high}"
        return f"{kind} from {low} to {high}"


def _number(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and float(value).is_integer() else f"{value:g}"


SECONDS = Limit(0, 30 * DAY, above=True)  # a deadline: positive, finite, at most 30 days
PORT = Limit(1, 65535, integer=True)
WORKER_CONCURRENCY = Limit(1, 1024, integer=True)
TAKEOVERS = Limit(0, 1000, integer=True)

# Settings field -> (its key in castor.toml, its range).
SETTINGS: dict[str, tuple[str, Limit]] = {
    "visibility_timeout": ("[broker] visibility_timeout", SECONDS),
    "max_argument_bytes": ("[security] max_argument_bytes", Limit(1, 64 * 1024 * 1024, integer=True)),
    "default_timeout": ("[tools] default_timeout", SECONDS),
    "max_retries": ("[tools] max_retries", Limit(0, 30, integer=True)),
    "retry_backoff": ("[tools] retry_backoff", Limit(0, 3600)),
    "concurrency": ("[workers] concurrency", WORKER_CONCURRENCY),
    "heartbeat": ("[workers] heartbeat", Limit(0, 3600, above=True)),
    "outage_deadline": ("[workers] outage_deadline", SECONDS),
    "flower_port": ("[flower] port", PORT),
    "max_takeovers": ("[coordinator] max_takeovers", TAKEOVERS),
}
TOOL_TIMEOUT = SECONDS  # each entry of [tools] timeouts
BUDGET = Limit(0, math.inf)  # each entry of [budgets]

# "command --option" -> its range.
OPTIONS: dict[str, Limit] = {
    "worker --concurrency": WORKER_CONCURRENCY,
    "flower --port": PORT,
    "coordinator --concurrency": Limit(1, 100_000, integer=True),
    "coordinator --lease": Limit(0.5, 3600),
    "coordinator --grace": Limit(0, 3600),
    "coordinator --max-takeovers": TAKEOVERS,
    "ps --limit": Limit(1, 1_000_000, integer=True),
    "deadletters --limit": Limit(1, 1_000_000, integer=True),
}


def check_setting(key: str, value: Any, limit: Limit, source: str) -> None:
    """``InvalidValueError`` unless ``value`` of ``key`` (read from ``source``) is within ``limit``."""
    if not limit.allows(value):
        raise InvalidValueError(f"{source}: {key} = {value!r} is out of range: it must be {limit.describe()}")


def option_type(option: str) -> Any:
    """The argparse ``type`` of ``OPTIONS[option]``: the number, or a usage error naming the range."""
    limit = OPTIONS[option]

    def parse(text: str) -> int | float:
        try:
            value: int | float = int(text) if limit.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {limit.describe()}") from None
        if not limit.allows(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range: it must be {limit.describe()}")
        return value

    parse.__name__ = "integer" if limit.integer else "number"  # what argparse calls it in an error
    return parse
