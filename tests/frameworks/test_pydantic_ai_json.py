"""The pydantic-ai guard reads messages' fields instead of dumping them (``castor.frameworks._pydantic_ai_json``):
the canonical request must stay what pydantic-ai's own dump gives, and the journaled response must
rebuild an equal message."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

pytest.importorskip("pydantic_ai")

from pydantic import BaseModel
from pydantic_ai.messages import (
    ImageUrl,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.usage import RequestUsage
from pydantic_core import to_jsonable_python

from castor.frameworks import _pydantic_ai_json as pa_json
from castor.frameworks import pydantic_ai as guard_module
from castor.frameworks._pydantic_ai_json import request_parts


class Found(BaseModel):
    path: str
    size: int


REQUESTS = [
    ModelRequest(parts=[UserPromptPart("clean up old logs")]),
    ModelRequest(parts=[SystemPromptPart("be careful"), UserPromptPart("go")], instructions="use tools"),
    ModelRequest(parts=[ToolReturnPart("search", "found /var/log/a", tool_call_id="c1")]),
    ModelRequest(parts=[ToolReturnPart("search", {"hits": [1, 2.5, None, {"id": "x", "k": []}]}, tool_call_id="c1",
                                       metadata={"source": "index"})]),
    ModelRequest(parts=[ToolReturnPart("search", Found(path="/a", size=3), tool_call_id="c1")]),  # the dump
    ModelRequest(parts=[ToolReturnPart("search", float("nan"), tool_call_id="c1")]),  # the dump
    ModelRequest(parts=[UserPromptPart(["look", ImageUrl("https://example.com/a.png")])]),  # the dump
    ModelRequest(parts=[ToolReturnPart("search", "bad arguments", tool_call_id="c1", outcome="retried")]),
]
RESPONSES = [
    ModelResponse(parts=[ToolCallPart("search", {"query": "q1"}, tool_call_id="c1")], model_name="m"),
    ModelResponse(parts=[ToolCallPart("search", '{"query": "q1"}', tool_call_id="c1", id="p1")]),
    ModelResponse(parts=[TextPart("done")], usage=RequestUsage(input_tokens=10, output_tokens=5),
                  model_name="m", provider_name="p", provider_response_id="r1", finish_reason="stop",
                  provider_details={"x": [1]}, timestamp=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)),
    ModelResponse(parts=[ThinkingPart("hmm", signature="s"), TextPart("a"), TextPart("b")]),
    ModelResponse(parts=[TextPart("a")], usage=RequestUsage(input_tokens=7, cache_read_tokens=3, details={"r": 2})),
]


def _dumped(message: Any) -> list[dict[str, Any]]:
    return pa_json._parts_json(ModelMessagesTypeAdapter.dump_python([message], mode="json")[0])


@pytest.mark.parametrize("message", REQUESTS + RESPONSES, ids=lambda m: type(m).__name__)
def test_a_message_read_from_its_fields_is_the_request_pydantic_ais_dump_gives(message: Any) -> None:
    assert pa_json.message_json(message) == _dumped(message)


def test_parts_that_are_not_plain_json_are_left_to_pydantic_ais_dump() -> None:
    read = [request_parts(m) is not None for m in REQUESTS]
    assert read == [True, True, True, True, False, False, False, True]
    assert request_parts(RESPONSES[3]) is None  # a ThinkingPart


@pytest.mark.parametrize("response", RESPONSES, ids=lambda m: type(m).__name__)
def test_the_journaled_response_is_its_non_default_fields_and_rebuilds_an_equal_response(response: Any) -> None:
    journaled = guard_module.response_json(response)
    assert guard_module.model_response(journaled) == response
    message = journaled["message"]
    assert message["kind"] == "response" and all("part_kind" in p for p in message["parts"])
    assert "state" not in message  # at its default
    assert ("usage" in message) == bool(response.usage.input_tokens)


def test_a_response_journaled_whole_by_an_earlier_version_still_rebuilds() -> None:
    response = RESPONSES[2]
    journaled = {**guard_module.response_json(response),
                 "message": ModelMessagesTypeAdapter.dump_python([response], mode="json")[0]}
    assert guard_module.model_response(journaled) == response


def _made(value: Any) -> Any:
    """Everything an object holds, with its types and its fields' order (``==`` of two messages compares
    their fields only, and a usage's ``==`` not which counts it holds)."""
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return type(value), [(k, _made(v)) for k, v in vars(value).items()]
    if isinstance(value, list | tuple):
        return type(value), [_made(v) for v in value]
    if isinstance(value, dict):
        return dict, [(k, _made(v)) for k, v in value.items()]
    return type(value), repr(value)


PLAIN = [
    RESPONSES[0],
    ModelResponse(parts=[TextPart("done"), ToolCallPart("a", {"q": [1, {"x": None}]}, tool_call_id="c2"),
                         ToolCallPart("b", None, tool_call_id="c3")],
                  usage=RequestUsage(input_tokens=7, cache_read_tokens=3, unmeasured_requests=1), model_name="m",
                  provider_name="p", provider_url="https://api.example.com", provider_response_id="r1",
                  finish_reason="tool_call", request_timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                  timestamp=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), run_id="r", conversation_id="c"),
]
JOURNALED_OTHERWISE = [  # the adapter's to validate: what plain_response does not make itself
    {"kind": "request", "parts": []},
    {"kind": "response", "parts": [{"part_kind": "thinking", "content": "hmm"}]},
    {"kind": "response", "parts": [{"part_kind": "text", "content": "a", "id": "p1"}]},
    {"kind": "response", "parts": [{"part_kind": "tool-call", "tool_name": "a", "args": [1], "tool_call_id": "c"}]},
    {"kind": "response", "parts": [{"part_kind": "tool-call", "tool_name": "a", "args": {1: 2}, "tool_call_id": "c"}]},
    {"kind": "response", "parts": [], "usage": {"input_tokens": 1, "details": {"r": 2}}},
    {"kind": "response", "parts": [], "usage": {"request_tokens": 1}},  # an earlier pydantic-ai's name
    {"kind": "response", "parts": [], "usage": {"input_tokens": 1.0}},
    {"kind": "response", "parts": [], "provider_details": {"x": 1}},
    {"kind": "response", "parts": [], "vendor_id": "r1"},
    {"kind": "response", "parts": [], "finish_reason": "unknown"},
    {"kind": "response", "parts": [], "state": "interrupted"},
    {"kind": "response", "parts": [], "model_name": 3},
    {"kind": "response", "parts": [], "timestamp": "yesterday"},
]


@pytest.mark.parametrize("response", PLAIN, ids=lambda m: type(m).__name__)
def test_a_plain_journaled_response_is_made_as_the_adapter_validates_it(response: Any) -> None:
    message = guard_module.response_json(response)["message"]
    made = pa_json.plain_response(message)
    assert made is not None
    validated = ModelMessagesTypeAdapter.validate_python([message])[0]
    assert made == validated == response
    assert _made(made) == _made(validated)
    for part, journaled in zip(made.parts, message["parts"], strict=True):  # a new dict, as the adapter's
        if isinstance(part, ToolCallPart) and isinstance(part.args, dict):
            assert part.args is not journaled["args"] and part.args == journaled["args"]


@pytest.mark.parametrize("message", JOURNALED_OTHERWISE, ids=str)
def test_anything_else_journaled_is_left_to_the_adapter(message: dict[str, Any]) -> None:
    assert pa_json.plain_response(message) is None


def test_a_late_starts_answers_are_made_or_validated_in_order() -> None:
    messages = [guard_module.response_json(r)["message"] for r in [RESPONSES[1], *PLAIN, *RESPONSES[2:], PLAIN[1]]]
    made = pa_json.model_responses([{"message": m} for m in messages])
    assert [pa_json.plain_response(m) is not None for m in messages] == [False, True, True, False, False, False, True]
    assert [_made(m) for m in made] == [_made(m) for m in ModelMessagesTypeAdapter.validate_python(messages)]


def test_fields_are_read_with_or_without_an_instance_dict_and_at_their_class_defaults() -> None:
    import dataclasses

    from castor.frameworks._pydantic_ai_readers import compact, request_reader

    @dataclasses.dataclass(slots=True)
    class Slotted:
        a: str | None = None
        b: int | None = None
        part_kind: str = "slotted"

    @dataclasses.dataclass
    class Sparse:  # sets only what it is given, as pydantic-ai's usage does
        a: str | None = None
        b: int | None = None

    sparse = Sparse.__new__(Sparse)
    sparse.b = 0
    assert compact(Slotted(b=0)) == {"b": 0, "part_kind": "slotted"}
    assert compact(sparse) == {"b": 0}
    assert compact(Slotted(a="x", b=1)) == {"a": "x", "b": 1, "part_kind": "slotted"}
    read = request_reader(Slotted, frozenset({"b"}), lambda v: v)
    assert read(Slotted(a="x", b=1), "request") == {"a": "x", "role": "slotted"}
    assert request_reader(Sparse, frozenset(), lambda v: v)(sparse, "request") == {"b": 0, "role": "request"}


def test_a_generated_reader_gives_what_reading_the_fields_by_name_gives() -> None:
    """The readers are written per class for speed; their output, key order included, is the journal's."""
    import dataclasses

    from castor.frameworks._pydantic_ai_readers import _REQUIRED, compact, field_defaults

    def by_name(x: Any) -> Any:  # compact as a plain loop over the fields, the reference
        if not dataclasses.is_dataclass(x):
            return to_jsonable_python(x) if type(x) not in (str, int, bool, type(None)) else x
        defaults = field_defaults(type(x))
        nones = {n: by_name(getattr(x, n)) for n, d in defaults.items() if d is None and getattr(x, n) is not None}
        always = {n: by_name(getattr(x, n)) for n, d in defaults.items()
                  if n != "parts" and (n in ("kind", "part_kind") or d is _REQUIRED)}
        out = {**nones, **always}
        for n, d in defaults.items():
            if n in out or n in always or n == "parts" or d is None or d is _REQUIRED:
                continue
            v = getattr(x, n)
            if isinstance(v, RequestUsage):
                counts = {k: c for k, c in vars(v).items() if c or k != "details"}
                if counts:
                    out[n] = counts
            elif v is not d and v != d:
                out[n] = by_name(v)
        if "parts" in defaults:
            out["parts"] = [by_name(p) for p in x.parts]
        return out

    for message in REQUESTS + RESPONSES:
        assert json.dumps(compact(message)) == json.dumps(by_name(message))  # the journal's bytes


@pytest.mark.parametrize("value", [
    "s", 0, False, None, 1.5, [], {}, {"a": {}, "b": [], "c": None, "d": 0, "e": "", "f": False},
    {"timestamp": 1, "x": {"id": "i", "y": [{"run_id": "r", "z": [1, {}]}]}}, [{"usage": {}}, [], None],
    {"a": {"timestamp": 1}}, {"a": (1,)}, {"timestamp": (1,)}, {1: "x"}, [float("nan")], {"a": float("inf")},
    {"a": Found(path="/a", size=1)},
])
def test_plain_copy_is_the_plain_copy_without_volatile_keys(value: Any) -> None:
    from castor.llm.cost import NotPlain, plain_sized

    try:
        expected = json.dumps(pa_json.without_volatile(plain_sized(value)[0]))
    except NotPlain:
        with pytest.raises(NotPlain):
            pa_json.plain_copy(value)
        return
    assert json.dumps(pa_json.plain_copy(value)) == expected


def test_a_field_whose_name_is_no_identifier_is_read_too() -> None:
    import copy
    import dataclasses

    from castor.frameworks._pydantic_ai_readers import compact, request_reader

    Odd = dataclasses.make_dataclass("Odd", [("a", str | None, dataclasses.field(default=None))])
    odd = Odd(a="x")
    setattr(odd, "not an identifier", "y")
    odd_field = copy.copy(Odd.__dataclass_fields__["a"])  # a hand-made class's: make_dataclass refuses the name
    odd_field.name = "not an identifier"
    Odd.__dataclass_fields__[odd_field.name] = odd_field
    assert compact(odd) == {"a": "x", "not an identifier": "y"}
    assert request_reader(Odd, frozenset(), lambda v: v)(odd, "request") == {"a": "x", "not an identifier": "y",
                                                                             "role": "request"}


def test_a_steps_tools_are_the_json_of_their_definitions_whether_found_or_made() -> None:
    """pydantic-ai makes a step's tool definitions anew from each tool's own schema dict: the request's tools
    are found by name, description and schema, and are what reading the definitions gives."""
    from pydantic_ai.models import ModelRequestParameters
    from pydantic_ai.tools import ToolDefinition

    schema = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}
    output = {"type": "object", "properties": {"answer": {"type": "string"}}}

    def step(description: str | None = "finds files", tool_schema: dict[str, Any] = schema) -> dict[str, Any]:
        parameters = ModelRequestParameters(
            function_tools=[ToolDefinition(name="search", parameters_json_schema=tool_schema, description=description)],
            output_tools=[ToolDefinition(name="final", parameters_json_schema=output, kind="output")],
        )
        request = guard_module.canonical_request([], None, parameters)
        read = [{"name": str(t.name), "description": str(t.description or ""),
                 "parameters": json.loads(json.dumps(t.parameters_json_schema))}
                for t in [*parameters.function_tools, *parameters.output_tools]]
        assert request["tools"] == read
        return request

    first, again = step(), step()
    assert again["tools"][0] is first["tools"][0]  # found, not made again
    assert step(description=None)["tools"][0]["description"] == ""
    changed = {**schema, "required": []}  # another schema (a tool registered anew): its own JSON
    assert step(tool_schema=changed)["tools"][0]["parameters"] == changed
    assert "tools" not in guard_module.canonical_request([], None, ModelRequestParameters())
