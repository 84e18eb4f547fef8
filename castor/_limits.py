"""The allowed range of every numeric command-line option, read off a pydantic field.

An option that overrides a setting (``castor worker --concurrency``) takes the setting's own field
(``[workers] concurrency``), so the range is declared once, in ``castor.settings``; the options no
setting has declare theirs on the fields of ``_Options`` below. ``option_type`` gives argparse the
parser: a value out of range is a usage error naming the range (the CLI exits 2).
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

from castor.settings import CoordinatorSection, FlowerSection, WorkersSection
from castor.settings._ranges import Range


class _Options(BaseModel):
    """Command-line options that no setting mirrors: only their ranges are used."""

    coordinator_concurrency: int = Field(ge=1, le=100_000)
    lease: float = Field(ge=0.5, le=3600)
    grace: float = Field(ge=0, le=3600)
    limit: int = Field(ge=1, le=1_000_000)  # rows a listing shows
    watch: float = Field(ge=0.1, le=3600)  # seconds between two frames of a --watch listing
    ping_timeout: float = Field(ge=0.1, le=300)  # how long a ping waits for workers' answers
    context_budget: int = Field(ge=0, le=10_000_000)  # tokens of a run's conversation (0: no MMU)
    metrics_port: int = Field(ge=0, le=65535)  # 0: a free port, logged


# "command --option" -> the field whose range it has.
OPTIONS: dict[str, FieldInfo] = {
    "worker --concurrency": WorkersSection.model_fields["concurrency"],
    "flower --port": FlowerSection.model_fields["port"],
    "console --port": FlowerSection.model_fields["port"],
    "coordinator --concurrency": _Options.model_fields["coordinator_concurrency"],
    "coordinator --lease": _Options.model_fields["lease"],
    "coordinator --grace": _Options.model_fields["grace"],
    "coordinator --max-takeovers": CoordinatorSection.model_fields["max_takeovers"],
    "coordinator --context-budget": _Options.model_fields["context_budget"],
    "ps --limit": _Options.model_fields["limit"],
    "deadletters --limit": _Options.model_fields["limit"],
    "ps --watch": _Options.model_fields["watch"],
    "budget show --watch": _Options.model_fields["watch"],
    "worker --timeout": _Options.model_fields["ping_timeout"],
    "coordinator --metrics-port": _Options.model_fields["metrics_port"],
    "worker --metrics-port": _Options.model_fields["metrics_port"],
    "console --metrics-port": _Options.model_fields["metrics_port"],
    "mcp --metrics-port": _Options.model_fields["metrics_port"],
}


def option_range(option: str) -> Range:
    """The range of ``OPTIONS[option]``."""
    limit = Range.of(OPTIONS[option])
    assert limit is not None, f"{option} has no declared range"
    return limit


def option_type(option: str) -> Any:
    """The argparse ``type`` of ``OPTIONS[option]``: the number, or a usage error naming the range."""
    limit = option_range(option)

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
