"""The shared guard machinery: argument schemas Castor can check, suspensions through task groups, extras."""

from __future__ import annotations

import asyncio
import inspect
import tomllib
from pathlib import Path
from typing import Any

import pytest

from castor import Castor
from castor.frameworks._common import (
    UnsupportedToolError,
    call_tool,
    first_suspension,
    jsonable,
    schema_function,
    signature_once,
    suspensions_pass,
)
from castor.kernel.context import Suspend

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("langchain", "langgraph", "pydantic-ai", "pydantic_ai", "openai-agents", "smolagents", "crewai")


def test_pip_install_dot_installs_no_framework_and_dev_installs_them_all() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith(FRAMEWORKS)]
    extras = project["optional-dependencies"]
    for extra in ("langchain", "pydantic-ai", "openai-agents", "smolagents"):
        assert set(extras[extra]) <= set(extras["dev"]), extra


def test_a_json_schema_becomes_the_signature_castor_checks() -> None:
    async def run(arguments: dict[str, Any]) -> Any:
        return arguments

    schema = {"type": "object", "required": ["path"], "properties": {
        "path": {"type": "string", "description": "where"}, "depth": {"type": "integer", "default": 2}}}
    func = schema_function("Test", "walk", schema, run)
    assert str(inspect.signature(func)) == "(*, path: str, depth: int = 2)"
    check = Castor(tools=[("walk", func)]).tools.get("walk").schema.check
    assert check({"path": 3})[1] == "invalid arguments for 'walk': path: Input should be a valid string"
    assert check({"path": "/", "depth": 1}) == ({"path": "/", "depth": 1}, None)
    assert asyncio.run(func(path="/tmp")) == {"path": "/tmp"}


def test_an_optional_argument_and_a_choice_of_values_are_checked_as_such() -> None:
    """What pydantic, LangChain and MCP servers give ``x: str | None`` and ``Literal[...]`` (refused before)."""
    async def run(arguments: dict[str, Any]) -> Any:
        return arguments

    schema = {"type": "object", "required": ["mode"], "properties": {
        "tag": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None, "title": "Tag"},
        "depth": {"type": ["integer", "null"], "default": 1},
        "mode": {"enum": ["keep", "drop"], "type": "string"}}}
    func = schema_function("Test", "pick", schema, run)
    assert str(inspect.signature(func)) == (
        "(*, tag: str | None = None, depth: int | None = 1, mode: Literal['keep', 'drop'])")
    check = Castor(tools=[("pick", func)]).tools.get("pick").schema.check
    assert check({"mode": "keep", "tag": None, "depth": None})[1] is None
    assert check({"mode": "keep", "tag": "t"})[1] is None
    assert "tag: Input should be a valid string" in str(check({"mode": "keep", "tag": 3})[1])
    assert "mode: Input should be 'keep' or 'drop'" in str(check({"mode": "burn"})[1])


@pytest.mark.parametrize(("schema", "why"), [
    ({"type": "object", "properties": {"file-name": {"type": "string"}}}, "argument 'file-name' is not a Python"),
    ({"type": "object", "properties": {"x": {"anyOf": [{"type": "string"}]}}}, "argument 'x' uses 'anyOf'"),
    ({"type": "object", "properties": {"x": {"type": ["string", "integer"]}}}, "argument 'x' has type"),
    ({"type": "object", "properties": {"x": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}},
     "argument 'x' uses 'anyOf'"),
    ({"type": "object", "properties": {"x": {"enum": [1.5, 2.5]}}}, "argument 'x' has an enum of other than"),
    ({"type": "string"}, "its arguments are not a JSON object"),
    ({"type": "object", "properties": {}, "$defs": {"A": {}}}, "its schema has nested definitions"),
])
def test_a_schema_castor_cannot_express_is_one_line_naming_the_tool(schema: dict[str, Any], why: str) -> None:
    async def run(arguments: dict[str, Any]) -> Any:
        return arguments

    with pytest.raises(UnsupportedToolError) as caught:
        schema_function("Test", "odd", schema, run)
    message = str(caught.value)
    assert message.startswith(f"Test tool 'odd' cannot be guarded: {why}") and "\n" not in message


async def test_a_suspension_wrapped_in_a_task_group_passes_as_itself() -> None:
    async def suspends() -> None:
        raise Suspend(4)

    async def finishes() -> None:
        return None

    with pytest.raises(Suspend) as caught:
        async with suspensions_pass(), asyncio.TaskGroup() as group:
            group.create_task(suspends())
            group.create_task(finishes())
    assert caught.value.step == 4
    assert first_suspension(ValueError("not one")) is None
    with pytest.raises(ValueError, match="other"):
        async with suspensions_pass():
            raise ValueError("other")


async def test_a_denial_under_structured_results_reaches_the_model_as_json() -> None:
    async def delete_file(path: str) -> str:
        return f"deleted {path}"

    async def agent() -> Any:
        return await call_tool("delete_file", {"path": "/tmp/x"})

    kernel = Castor(tools=[delete_file], destructive=["delete_file"], structured_results=True)
    cp = await kernel.run(agent)
    kernel.reject(cp, "no")
    cp = await kernel.run(agent, checkpoint=cp)
    assert cp.result == {"status": "HITL_REJECTED", "feedback_message": "no"}


async def test_a_synchronous_loop_in_a_thread_reaches_the_run_and_a_run_ending_error_crosses_except_exception(
) -> None:
    from castor.errors import ReplayDivergenceError, UnsupportedError
    from castor.frameworks._common import in_thread
    from castor.frameworks._loop_calls import blocking

    async def answer() -> str:
        return "from the loop"

    async def diverge() -> str:
        raise ReplayDivergenceError(3, {"tool_name": "t", "arguments": {}}, {"tool_name": "u", "arguments": {}})

    def framework_loop(start: Any) -> Any:
        try:  # what smolagents and CrewAI do around a model or tool call: retry, or tell the model
            return blocking("Test", start, "run(agent)")
        except Exception as error:
            return f"swallowed {error}"

    assert await in_thread(framework_loop, answer) == "from the loop"
    with pytest.raises(ReplayDivergenceError) as caught:
        await in_thread(framework_loop, diverge)
    assert caught.value.step == 3
    with pytest.raises(UnsupportedError, match=r"call `await run\(agent\)` inside a Castor run"):
        blocking("Test", answer, "run(agent)")  # on the loop itself: it would wait for itself


def test_an_identity_cache_survives_another_thread_dropping_its_oldest_entry_first() -> None:
    """Threads of a synchronous framework share a guard's caches: the entry a full cache drops may be gone
    (dropped by another thread) between the look and the drop; the conversion must still be returned."""
    from castor.frameworks._common import IdentityCache

    class RacedDict(dict[int, Any]):
        def __iter__(self) -> Any:
            keys = list(super().__iter__())
            self.clear()  # another thread dropped them all meanwhile
            return iter(keys)

    cache = IdentityCache(lambda message: {"converted": message}, size=2)
    cache._entries = RacedDict()
    kept = [object() for _ in range(4)]
    assert [cache(m)["converted"] for m in kept] == kept


def test_a_signature_built_once_is_what_inspect_gives_a_method_and_its_bound_form() -> None:
    class Model:
        @signature_once
        async def _agenerate(self, messages: list[Any], stop: Any = None, run_manager: Any = None,
                             **kwargs: Any) -> None: ...

    bound = inspect.signature(Model()._agenerate)
    assert list(bound.parameters) == ["messages", "stop", "run_manager", "kwargs"]  # LangChain asks for run_manager
    assert inspect.signature(Model._agenerate) is inspect.signature(Model._agenerate)  # built once, not per call


def test_jsonable_arguments_are_a_copy_in_their_order_their_models_and_tuples_as_json() -> None:
    import pydantic

    class Point(pydantic.BaseModel):
        x: int

    plain = {"query": "q", "n": 2, "flag": True, "none": None}
    copied = jsonable(plain)
    assert copied == plain and copied is not plain and list(copied) == list(plain)
    mixed = {"query": "q", "point": Point(x=1), "pair": (1, 2), 3: "key"}
    assert list(jsonable(mixed).items()) == [("query", "q"), ("point", {"x": 1}), ("pair", [1, 2]), ("3", "key")]
