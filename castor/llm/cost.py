"""What a model call may cost before it runs, and what it cost after: tokens and dollars, offline.

Resources a model call draws from: ``input_tokens``, ``output_tokens``, ``tokens`` (both) and ``usd``
(from the model's price per million tokens). Before the call the kernel reserves the most it may cost
(``reservation``: an estimate of the prompt plus ``max_tokens``); after it, it settles to what the
provider reported (``charge_for``). The estimator needs no tokenizer download: it counts UTF-8 bytes,
which over-estimates real tokenizers (about 4 bytes a token for English) on purpose, so a reservation
covers the call.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from castor.errors import ConfigError

TOKEN_RESOURCES = ("input_tokens", "output_tokens", "tokens", "usd")
DEFAULT_MAX_TOKENS = 1024
BYTES_PER_TOKEN = 3  # below the ~4 of real tokenizers: the estimate errs high
MESSAGE_OVERHEAD = 4  # tokens a chat format spends per message (role, separators)


_SIZER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=repr)


def estimate_tokens(value: Any) -> int:
    """An offline upper estimate of the tokens ``value`` (text, or a request's JSON) takes."""
    return -(-json_size(value) // BYTES_PER_TOKEN)


def json_size(value: Any) -> int:
    """About the UTF-8 length of ``value`` as compact JSON, counted without writing it (a walk over a chat
    request's dicts, lists and strings is twice as fast as encoding it; other values are encoded)."""
    kind = type(value)
    if kind is str:
        return (len(value) if value.isascii() else len(value.encode("utf-8"))) + 2  # with its quotes
    if kind is dict:
        size = 1
        for key, item in value.items():
            # json_size(key) + 2 (colon, comma) + json_size(item), a string key or item counted in place
            size += ((len(key) if key.isascii() else len(key.encode("utf-8"))) + 4 if type(key) is str
                     else json_size(key) + 2)
            size += ((len(item) if item.isascii() else len(item.encode("utf-8"))) + 2 if type(item) is str
                     else json_size(item))
        return size
    if kind is list:
        size = 1
        for item in value:
            size += ((len(item) if item.isascii() else len(item.encode("utf-8"))) + 3 if type(item) is str
                     else json_size(item) + 1)
        return size
    if value is None or kind is bool or kind is int:
        return 5 if kind is not int else len(str(value))
    text = _SIZER.encode(value)
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class NotPlain(Exception):
    """A value ``plain_sized`` leaves to the JSON round trip (a tuple, a model, a non-string key, NaN, ...)."""


_INF = float("inf")


def plain_sized(value: Any) -> tuple[Any, int]:
    """A copy of plain JSON data and its ``json_size``, in one walk (a model call's request is copied, so
    later changes by the caller cannot reach the journal, and sized for its reservation: one pass for both
    halves the cost of two). ``NotPlain`` for anything JSON spells another way."""
    kind = type(value)
    if kind is str:
        return value, (len(value) if value.isascii() else len(value.encode("utf-8"))) + 2
    if kind is dict:
        out = {}
        size = 1
        for key, item in value.items():
            if type(key) is not str:
                raise NotPlain
            out[key], item_size = plain_sized(item)
            size += (len(key) if key.isascii() else len(key.encode("utf-8"))) + 4 + item_size  # quotes, colon, comma
        return out, size
    if kind is list:
        items = []
        size = 1
        for item in value:
            copy, item_size = plain_sized(item)
            items.append(copy)
            size += item_size + 1
        return items, size
    if value is None or kind is bool:
        return value, 5
    if kind is int:
        return value, len(str(value))
    if kind is float and value == value and value != _INF and value != -_INF:
        return value, len(_SIZER.encode(value))
    raise NotPlain


def estimate_prompt(request: Mapping[str, Any], size: int | None = None) -> int:
    """An offline upper estimate of a request's prompt tokens: its messages, tools and other fields
    (``size``: the request's ``json_size`` if known already)."""
    messages = request.get("messages")
    overhead = MESSAGE_OVERHEAD * len(messages) if isinstance(messages, list) else 0
    if size is None:
        return estimate_tokens(request) + overhead
    return -(-size // BYTES_PER_TOKEN) + overhead


@dataclass(frozen=True, slots=True)
class Price:
    """Dollars per million input and output tokens."""

    input: float
    output: float

    def usd(self, input_tokens: float, output_tokens: float) -> float:
        """What that many tokens cost."""
        return (input_tokens * self.input + output_tokens * self.output) / 1_000_000


@dataclass(frozen=True, slots=True)
class FlatPrice:
    """castor-kernel 0.5.1's price of a model call (``LLMSyscall``'s ``consumes`` / ``cost_per_use``): ``cost``
    of ``resource`` per call, beside its tokens. A stream that stops part way pays ``per_chunk`` for each
    chunk it received, at most ``cost``; without ``per_chunk`` it pays nothing of ``resource`` (its tokens still)."""

    resource: str
    cost: float
    per_chunk: float | None = None

    def part(self, chunks: int) -> float:
        """What a stream stopped after ``chunks`` chunks pays of ``resource``."""
        if self.per_chunk is None:
            return 0.0
        return min(chunks * self.per_chunk, self.cost)

    def add_to(self, cost: Mapping[str, float], amount: float) -> dict[str, float]:
        """``cost`` with ``amount`` of ``resource`` added (nothing added for 0)."""
        total = dict(cost)
        if amount:
            total[self.resource] = total.get(self.resource, 0.0) + amount
        return total


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
    cost: dict[str, float] = {}
    if input_tokens:
        cost["input_tokens"] = float(input_tokens)
    if output_tokens:
        cost["output_tokens"] = float(output_tokens)
    if input_tokens or output_tokens:
        cost["tokens"] = float(input_tokens + output_tokens)
        if price is not None and (price.input or price.output):
            cost["usd"] = price.usd(input_tokens, output_tokens)
    return cost


def reservation(
    price: Price | None, request: Mapping[str, Any], max_tokens: int, size: int | None = None
) -> dict[str, float]:
    """The most a call of ``request`` (a journaled request) may cost: the prompt's estimate plus
    ``max_tokens`` of output (``size``: the request's JSON size, if measured as it was copied)."""
    prompt = estimate_prompt(request, size) if size is not None else _journaled_prompt(request)
    return cost_of_tokens(price, prompt, max_tokens)


# id -> (message, its JSON size) of journaled messages: a conversation's request repeats every earlier
# message (the same objects when a framework guard builds it, castor.lib.model_call(canonical=True)), so
# each is sized once rather than at every step. Journaled data is never changed, so a size stays true.
_SIZES: dict[int, tuple[Any, int]] = {}
_SIZES_KEPT = 4096
# id(first item) -> (a journaled list, its JSON size): the next step's list repeats it and adds an item or
# two (the same objects), so it costs its new items and one identity pass over the rest.
_LISTS: dict[int, tuple[list[Any], int]] = {}
_LISTS_KEPT = 256


def _message_size(message: Any) -> int:
    hit = _SIZES.get(id(message))
    if hit is not None and hit[0] is message:
        return hit[1]
    size = json_size(message)
    if type(message) is dict:
        if len(_SIZES) >= _SIZES_KEPT:
            _SIZES.pop(next(iter(_SIZES)), None)  # another thread may have dropped it
        _SIZES[id(message)] = (message, size)
    return size


def _list_size(items: list[Any]) -> int:
    """``json_size(items)`` of a journaled list, from the size of the list it extends when there is one."""
    if not items:
        return 1  # as json_size counts it
    first = items[0]
    hit = _LISTS.get(id(first))
    if hit is not None and hit[0][0] is first and len(hit[0]) <= len(items) and all(map(operator.is_, hit[0], items)):
        seen, size = hit
        if len(seen) == len(items):
            return size
        rest = items[len(seen):]
    else:
        size, rest = 1, items
        if len(_LISTS) >= _LISTS_KEPT:
            _LISTS.pop(next(iter(_LISTS)), None)
    for item in rest:
        size += _message_size(item) + 1
    _LISTS[id(first)] = (items, size)
    return size


def _journaled_prompt(request: Mapping[str, Any]) -> int:
    """``estimate_prompt(request)`` for a journaled request (never changed afterwards): the same count,
    each message and each tool sized once, a conversation's list from the previous step's."""
    if type(request) is not dict:
        return estimate_prompt(request)
    # json_size(request), summed by parts: each key and value; a list (messages, tools) item by item.
    size = 1
    for key, value in request.items():
        size += json_size(key) + 2
        size += _list_size(value) if type(value) is list else _message_size(value)
    messages = request.get("messages")
    overhead = MESSAGE_OVERHEAD * len(messages) if isinstance(messages, list) else 0
    return -(-size // BYTES_PER_TOKEN) + overhead


def usage_from(response: Mapping[str, Any], request: Mapping[str, Any]) -> tuple[int, int, bool]:
    """``(input, output, estimated)`` tokens of a response: as reported, else estimated offline."""
    usage = response.get("usage")
    if type(usage) is dict and not usage.get("estimated"):
        given_in, given_out = usage.get("input_tokens"), usage.get("output_tokens")
        if type(given_in) is int and type(given_out) is int and given_in >= 0 and given_out >= 0:
            return given_in, given_out, False
    output = 1  # json_size of the response without its usage, counted without copying it
    for key, value in response.items():
        if key != "usage":
            output += json_size(key) + 2 + json_size(value)
    return _journaled_prompt(request), -(-output // BYTES_PER_TOKEN), True
