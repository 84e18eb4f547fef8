"""What a model call may cost before it runs, and what it cost after: tokens and dollars, offline.

Resources a model call draws from: ``input_tokens``, ``output_tokens``, ``tokens`` (both) and ``usd``
(from the model's price per million tokens). Before the call the kernel reserves the most it may cost
(``reservation``: an estimate of the prompt plus ``max_tokens``); after it, it settles to what the
provider reported (``charge_for``). The estimator needs no tokenizer download: it counts UTF-8 bytes,
which over-estimates real tokenizers (about 4 bytes a token for English) on purpose, so a reservation
covers the call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from castor._canonical import canonical
from castor._errors import ConfigError

TOKEN_RESOURCES = ("input_tokens", "output_tokens", "tokens", "usd")
DEFAULT_MAX_TOKENS = 1024
BYTES_PER_TOKEN = 3  # below the ~4 of real tokenizers: the estimate errs high
MESSAGE_OVERHEAD = 4  # tokens a chat format spends per message (role, separators)


def estimate_tokens(value: Any) -> int:
    """An offline upper estimate of the tokens ``value`` (text, or a request's JSON) takes."""
    text = value if isinstance(value, str) else canonical(value)
    return math.ceil((len(text) if text.isascii() else len(text.encode("utf-8"))) / BYTES_PER_TOKEN)


def estimate_prompt(request: Mapping[str, Any]) -> int:
    """An offline upper estimate of a request's prompt tokens: its messages, tools and other fields."""
    messages = request.get("messages")
    overhead = MESSAGE_OVERHEAD * len(messages) if isinstance(messages, list) else 0
    return estimate_tokens(request) + overhead


@dataclass(frozen=True, slots=True)
class Price:
    """Dollars per million input and output tokens."""

    input: float
    output: float

    def usd(self, input_tokens: float, output_tokens: float) -> float:
        """What that many tokens cost."""
        return (input_tokens * self.input + output_tokens * self.output) / 1_000_000


def price_table(prices: Mapping[str, Any] | None) -> dict[str, Price]:
    """``{model: Price}`` from ``{model: Price | {"input": ..., "output": ...} | (input, output)}``."""
    table: dict[str, Price] = {}
    for model, value in (prices or {}).items():
        if isinstance(value, Price):
            price = value
        elif hasattr(value, "input") and hasattr(value, "output"):  # castor.toml's [llm.prices.<model>]
            price = Price(float(value.input), float(value.output))
        elif isinstance(value, Mapping):
            price = Price(float(value.get("input", 0.0)), float(value.get("output", 0.0)))
        elif isinstance(value, tuple | list) and len(value) == 2:
            price = Price(float(value[0]), float(value[1]))
        else:
            raise ConfigError(
                f"price of model {model!r} must be {{input=..., output=...}} per million tokens, got {value!r}"
            )
        if price.input < 0 or price.output < 0 or math.isnan(price.input + price.output):
            raise ConfigError(f"price of model {model!r} must not be negative, got {value!r}")
        table[str(model)] = price
    return table


def cost_of_tokens(price: Price | None, input_tokens: float, output_tokens: float) -> dict[str, float]:
    """The resources ``input_tokens`` + ``output_tokens`` draw; ``usd`` only for a priced model."""
    cost = {
        "input_tokens": float(input_tokens),
        "output_tokens": float(output_tokens),
        "tokens": float(input_tokens + output_tokens),
    }
    if price is not None:
        cost["usd"] = price.usd(input_tokens, output_tokens)
    return {k: v for k, v in cost.items() if v}


def reservation(price: Price | None, request: Mapping[str, Any], max_tokens: int) -> dict[str, float]:
    """The most a call of ``request`` may cost: the prompt's estimate plus ``max_tokens`` of output."""
    return cost_of_tokens(price, estimate_prompt(request), max_tokens)


def usage_from(response: Mapping[str, Any], request: Mapping[str, Any]) -> tuple[int, int, bool]:
    """``(input, output, estimated)`` tokens of a response: as reported, else estimated offline."""
    usage = response.get("usage")
    if isinstance(usage, Mapping) and not usage.get("estimated"):
        try:
            given = int(usage["input_tokens"]), int(usage["output_tokens"])
        except (KeyError, TypeError, ValueError):
            pass
        else:
            if given[0] >= 0 and given[1] >= 0:
                return given[0], given[1], False
    output = {k: v for k, v in response.items() if k != "usage"}
    return estimate_prompt(request), estimate_tokens(output), True
