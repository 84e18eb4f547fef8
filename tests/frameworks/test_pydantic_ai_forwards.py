"""A guarded model holds the wrapped model's own bound methods for what ``WrapperModel`` only forwards
(``castor.frameworks.pydantic_ai._FORWARDED``): these tests fail if pydantic-ai renames one of them or makes
its ``WrapperModel`` method anything but a plain forward."""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any

import pytest

pytest.importorskip("pydantic_ai")

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.wrapper import WrapperModel

from castor import Castor
from castor.frameworks.pydantic_ai import _FORWARDED, GuardedModel, guard

NAMES = ("prepare_messages", "_unified_effort", "_start_request_deadline", "_model_for_response")


def _answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart("done")])


def test_every_forward_is_pydantic_ais_own_method() -> None:
    assert _FORWARDED == NAMES  # a name missing here: pydantic-ai moved it (the guard then forwards as before)
    for name in NAMES:
        assert callable(getattr(Model, name)), name


@pytest.mark.parametrize("name", NAMES)
def test_wrapper_model_only_forwards(name: str) -> None:
    """``WrapperModel``'s method returns the wrapped model's same method called with its own arguments,
    nothing else: the bound method of the wrapped model is the same call."""
    function = ast.parse(textwrap.dedent(inspect.getsource(getattr(WrapperModel, name)))).body[0]
    assert isinstance(function, ast.FunctionDef)
    body = [s for s in function.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    assert len(body) == 1 and isinstance(body[0], ast.Return), ast.dump(function)
    call = body[0].value
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == name
    target = call.func.value
    assert isinstance(target, ast.Attribute) and target.attr == "wrapped"
    assert isinstance(target.value, ast.Name) and target.value.id == "self"
    params = [a.arg for a in function.args.args[1:]]
    passed = [a.id for a in call.args if isinstance(a, ast.Name)] + [
        k.value.id for k in call.keywords if isinstance(k.value, ast.Name)]
    assert passed == params + [a.arg for a in function.args.kwonlyargs], (params, passed)


def test_guarded_model_holds_the_wrapped_models_methods() -> None:
    wrapped = FunctionModel(_answer, model_name="scripted")
    model = GuardedModel(wrapped)
    for name in NAMES:
        method: Any = getattr(model, name)
        assert method.__self__ is wrapped and method.__func__ is getattr(type(wrapped), name), name
    assert model.prepare_messages([]) == wrapped.prepare_messages([])


async def test_a_guarded_run_answers_as_before() -> None:
    agent = Agent(FunctionModel(_answer, model_name="scripted"))
    kernel = Castor(tools=[])

    async def run() -> Any:
        return (await guard(agent).run("hello")).output

    checkpoint = await kernel.run(run)
    assert checkpoint.status == "COMPLETED" and checkpoint.result == "done"
