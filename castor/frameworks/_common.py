"""What every framework guard needs: tools as syscalls, tool functions for ``Castor(tools=...)``, model
steps, argument schemas Castor can check, and suspensions that pass through the framework.

A framework calls a guarded tool with the arguments it parsed from the model's tool call; ``call_tool``
turns them back into JSON and asks ``castor.lib.tool``, so the journal holds what the model asked and the
run's executor (in this process or on a worker pool) runs the tool function the operator registered.
That function is the framework tool's own Python function where there is one (Castor then checks the
arguments against its signature), else a function built from the tool's JSON schema (``schema_function``)
that runs the unguarded framework tool. Either way the arguments must fit Castor's argument schema:
keyword arguments with Python names and plain JSON types; anything else is ``UnsupportedToolError``.

Castor's suspension (``castor.kernel.context.Suspend``) is a ``BaseException``: a framework's
``except Exception`` around a tool cannot turn it into a model message. Frameworks that run tool calls in
task groups wrap it in a ``BaseExceptionGroup``; ``suspensions_pass`` unwraps it again. An error that
ends the run (a replay divergence at a tool step, a run that ended) crosses the framework's handling the
same way, carried in a ``RunEnding`` (a ``BaseException``): ``call_tool`` raises it, and the runner (or
``suspensions_pass``, ``in_thread``) ends the run with the error itself, never the model reading it.

Synchronous frameworks (smolagents, CrewAI) run their loop in a worker thread (``in_thread``); their
guarded model and tool calls are awaited on the run's event loop from that thread (``blocking``), so the
syscalls run where the Castor run lives and a suspension comes back to the thread as itself. An error
that ends the run (a replay divergence, a refused or failed model call) crosses the framework's
``except Exception`` (which would retry or tell the model) as a ``BaseException`` and is raised as itself
by ``in_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import keyword
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

from pydantic_core import to_jsonable_python

from castor.errors import (
    ConfigError,
    JournalConflictError,
    ReplayDivergenceError,
    RunEndedError,
    RunFinishedError,
    StaleLeaseError,
    UnknownToolError,
    UnsupportedError,
)
from castor.kernel.context import RunEnding, Suspend, current_run
from castor.lib import tool
from castor.lib.models import model_call
from castor.llm import ModelCallError, ModelRefusedError
from castor.llm.types import canonical_request as _canonical
from castor.results import SyscallResult

# Errors after which the run cannot go on: a framework must not retry the call or hand it to the model.
# A tool Castor does not know is the operator's omission (the framework knows the tool; Castor(tools=...)
# does not list it), not the model's mistake. The last three say this process no longer owns the run
# (its lease lapsed, another process journaled the step or finished the run): the model must not be asked
# anything more on its behalf.
_RUN_ENDING = (
    ReplayDivergenceError, ModelRefusedError, ModelCallError, UnknownToolError, RunEndedError,
    StaleLeaseError, JournalConflictError, RunFinishedError,
)

F = TypeVar("F", bound=Callable[..., Any])

ToolEntry = tuple[str, Callable[..., Any]]
"""A framework tool as ``Castor(tools=[...])`` registers it: its name and the function the executor runs."""

_JSON_TYPES: dict[str, Any] = {
    "string": str, "integer": int, "number": float, "boolean": bool, "array": list, "object": dict,
}
# JSON schema keywords that only describe a value further (Castor's schema may ignore them).
_DESCRIPTIVE = {"title", "description", "default", "examples", "format", "minimum", "maximum", "minLength",
                "maxLength", "pattern", "items", "additionalProperties", "minItems", "maxItems", "type",
                "exclusiveMinimum", "exclusiveMaximum", "uniqueItems", "properties", "required"}


class UnsupportedToolError(ConfigError):
    """A framework tool whose arguments Castor cannot check or pass (raised by ``guard()``, naming the tool)."""


def refuse(framework: str, name: str, why: str) -> UnsupportedToolError:
    """The one-line refusal of tool ``name``: what is wrong and that Castor cannot guard it."""
    return UnsupportedToolError(f"{framework} tool {name!r} cannot be guarded: {why}")


def check_name(framework: str, tool_name: str, argument: str) -> None:
    """An argument must be a Python keyword argument name: tools are called as ``tool(name, **arguments)``."""
    if not argument.isidentifier() or keyword.iskeyword(argument):
        raise refuse(framework, tool_name, f"argument {argument!r} is not a Python identifier")


def _annotation(framework: str, tool_name: str, argument: str, schema: Mapping[str, Any]) -> Any:
    nullable = _nullable(schema)
    if nullable is not None:  # ``X | None``: what pydantic, LangChain and MCP servers give an optional argument
        rest = {k: v for k, v in schema.items() if k not in ("anyOf", "type")}
        return _annotation(framework, tool_name, argument, {**rest, **nullable}) | None
    if "enum" in schema:
        values = schema["enum"]
        if not isinstance(values, list) or not values or not all(isinstance(v, str | int) for v in values):
            raise refuse(framework, tool_name, f"argument {argument!r} has an enum of other than strings or integers")
        return Literal[tuple(values)]
    unknown = sorted(set(schema) - _DESCRIPTIVE)
    if unknown:
        raise refuse(
            framework, tool_name,
            f"argument {argument!r} uses {unknown[0]!r}, which Castor's argument schema cannot express",
        )
    kind = schema.get("type")
    if kind is None:
        return Any
    if not isinstance(kind, str) or kind not in _JSON_TYPES:
        raise refuse(framework, tool_name, f"argument {argument!r} has type {kind!r}, not a JSON type Castor checks")
    return _JSON_TYPES[kind]


def _nullable(schema: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The one other schema of an ``anyOf`` of it and ``{"type": "null"}`` (or of ``"type": [X, "null"]``);
    None for any other schema."""
    kind = schema.get("type")
    if isinstance(kind, list) and len(kind) == 2 and "null" in kind and "anyOf" not in schema:
        return {"type": next(k for k in kind if k != "null")}
    either = schema.get("anyOf")
    if not isinstance(either, list) or len(either) != 2 or {"type": "null"} not in either:
        return None
    other = next(s for s in either if s != {"type": "null"})
    return other if isinstance(other, Mapping) and "anyOf" not in other else None


def schema_signature(framework: str, tool_name: str, schema: Mapping[str, Any]) -> inspect.Signature:
    """The keyword-only signature a JSON object schema describes; ``UnsupportedToolError`` if it has none."""
    if schema.get("type", "object") != "object" or not isinstance(schema.get("properties", {}), Mapping):
        raise refuse(framework, tool_name, "its arguments are not a JSON object with named properties")
    if "$defs" in schema or "definitions" in schema:
        raise refuse(framework, tool_name, "its schema has nested definitions ($defs), which Castor cannot express")
    required = set(schema.get("required") or ())
    params = []
    for argument, spec in (schema.get("properties") or {}).items():
        check_name(framework, tool_name, argument)
        annotation = _annotation(framework, tool_name, argument, spec if isinstance(spec, Mapping) else {})
        default = inspect.Parameter.empty if argument in required else spec.get("default")
        params.append(inspect.Parameter(argument, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=annotation))
    return inspect.Signature(params)


def schema_function(
    framework: str, tool_name: str, schema: Mapping[str, Any], run: Callable[[dict[str, Any]], Any]
) -> Callable[..., Any]:
    """A tool function for ``Castor(tools=...)`` whose signature is ``schema``'s; it returns (awaits, if ``run``
    is a coroutine function) ``run(arguments)``.

    A synchronous framework's tool object gets a synchronous ``run``: the executor then runs it in a thread
    of its own (or the framework's waiting thread), never in the loop's default executor, whose threads a
    framework's own loop may all be holding (CrewAI's ``akickoff`` runs its agents' steps there)."""
    signature = schema_signature(framework, tool_name, schema)
    call: Callable[..., Any]
    if inspect.iscoroutinefunction(run):
        async def call(**arguments: Any) -> Any:
            return await run(arguments)
    else:
        def call(**arguments: Any) -> Any:
            return run(arguments)

    call.__name__ = call.__qualname__ = tool_name
    call.__signature__ = signature  # type: ignore[union-attr]  # read by inspect.signature (Castor's ArgSchema)
    call.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return call


def check_function(framework: str, tool_name: str, func: Callable[..., Any], injected: Iterable[str] = ()) -> None:
    """A tool's own function must take keyword arguments only from the model (none the framework injects)."""
    taken = set(injected)
    for param in inspect.signature(func).parameters.values():
        if param.name in taken:
            raise refuse(
                framework, tool_name,
                f"argument {param.name!r} is injected by {framework} at call time; Castor runs tools with the "
                f"model's JSON arguments only",
            )
        if param.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL):
            raise refuse(framework, tool_name, f"argument {param.name!r} cannot be passed by keyword")
        check_name(framework, tool_name, param.name)


def signature_once(func: F) -> F:
    """``func`` with its ``inspect`` signature built once (``__signature__``, which inspect returns as it is).
    LangChain reads the signature of a model's ``_agenerate`` on every call, to learn whether it takes a
    ``run_manager``: built anew each time, that cost a guarded step more than a third of what Castor adds."""
    func.__signature__ = inspect.signature(func)  # type: ignore[attr-defined]
    return func


def jsonable(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The framework's parsed arguments as JSON data (pydantic models become dicts), as the journal holds them.

    A loop: for the usual one to three arguments, Python 3.11's specialised bytecode costs fewer instructions
    than telling the types apart at C level first (``set(map(type, ...))``: 4.8k against 2.2k a call, callgrind)."""
    out = {}
    for k, v in arguments.items():
        kind = type(v)  # a string or an integer is its own JSON: no serializer call for the usual arguments
        out[k if type(k) is str else str(k)] = (
            v if kind is str or kind is int or kind is bool or v is None else to_jsonable_python(v)
        )
    return out


async def call_tool(name: str, arguments: Mapping[str, Any]) -> Any:
    """Ask Castor for tool ``name``; returns what the framework hands the model (a denial as its JSON).

    An error that ends the run is raised carried (``RunEnding``): the framework's tool error handling
    would otherwise give it to the model as the tool's result."""
    try:
        result = await tool(name, **jsonable(arguments))
    except _RUN_ENDING as error:
        ctx = current_run.get()
        if ctx is None or ctx.closed:  # no run whose runner would unwrap it: the error as itself
            raise
        raise RunEnding(error) from error
    if isinstance(result, SyscallResult):  # Castor(structured_results=True): the model reads plain JSON
        if result.ok:
            return result.value
        denial = {"status": result.status, "feedback_message": result.feedback}
        return {k: v for k, v in denial.items() if v is not None}
    return result


def model_id_of(obj: Any, *attributes: str, default: str = "model") -> str:
    """The model's id for ``model:<id>`` steps: the first of ``attributes`` that is a non-empty string."""
    for attribute in attributes:
        value = getattr(obj, attribute, None)
        if isinstance(value, str) and value:
            return value
    return default


def model_step(
    request: Mapping[str, Any], model: str, invoke: Callable[[dict[str, Any]], Awaitable[Any]], *,
    canonical: bool = False, partial: Callable[[], dict[str, Any] | None] | None = None,
) -> Awaitable[dict[str, Any]]:
    """One model call as a journaled step (await it); ``invoke`` calls the framework's own model (not called
    on replay).

    ``canonical=True``: ``request`` is made of parts already canonical (``canonical_part``, cached per
    framework object) and ``invoke`` returns a fresh JSON dict; Castor then copies neither
    (``castor.lib.model_call(canonical=True)``). ``partial``: what a streaming ``invoke`` received, journaled
    and charged if it fails part way (``model_call(partial=...)``). A plain function handing back
    ``model_call``'s coroutine: a coroutine of its own would cost every model step a frame that only awaits.
    """
    return model_call(request, model=model, invoke=invoke, canonical=canonical, partial=partial)


def canonical_part(value: Any) -> Any:
    """``value`` as checked, copied JSON data (what ``model_call`` makes of a request), for a part of a
    request converted once and then shared by every step's request (``IdentityCache``)."""
    return _canonical(value)


class IdentityCache:
    """``convert(x)`` computed once per object ``x``: each framework message's canonical JSON (a
    conversation grows by a message or two a step and its whole request is journaled at every step, so
    converting it anew would cost the length of the conversation at each step), each tool's guarded form.
    Kept by identity (the object is held, so its id is not reused), the oldest dropped past ``size``; a
    framework that edits a message in place after the model saw it would not be seen (none of the
    supported ones does)."""

    def __init__(self, convert: Callable[[Any], Any], size: int = 4096) -> None:
        self._convert = convert
        self._size = size
        self._entries: dict[int, tuple[Any, Any]] = {}

    def __call__(self, message: Any) -> Any:
        """``convert(message)``, from the cache when this very object was converted before."""
        entries = self._entries
        hit = entries.get(id(message))
        if hit is not None and hit[0] is message:
            return hit[1]
        value = self._convert(message)
        if len(entries) >= self._size:
            return self.put(message, value)
        entries[id(message)] = (message, value)  # put's common case here: a method call less per new message
        return value

    def put_all(self, messages: Sequence[Any], values: Iterable[Any]) -> None:
        """``put`` of each of ``messages`` with its value, in order (a whole conversation, stored in C)."""
        entries = self._entries
        if len(entries) + len(messages) > self._size:  # some oldest ones to drop: one at a time
            for message, value in zip(messages, values, strict=False):
                self.put(message, value)
            return
        entries.update(zip(map(id, messages), zip(messages, values, strict=False), strict=False))

    def put(self, message: Any, value: Any) -> Any:
        """Remember ``value`` as ``convert(message)`` (known already, e.g. from the response just journaled)."""
        entries = self._entries
        if len(entries) >= self._size:
            # Synchronous frameworks' threads may share one cache: another thread may drop the same oldest
            # entry, or add one, between the look and the drop. Losing a cached conversion costs one redo.
            with contextlib.suppress(KeyError, RuntimeError, StopIteration):
                entries.pop(next(iter(entries)))
        entries[id(message)] = (message, value)
        return value


def first_suspension(error: BaseException) -> Suspend | RunEnding | None:
    """The Castor suspension (or carried run-ending error) ``error`` is or carries (in an exception group
    or as its cause), if any."""
    if isinstance(error, Suspend | RunEnding):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = first_suspension(inner)
            if found is not None:
                return found
    cause = error.__cause__ or error.__context__
    if isinstance(cause, Suspend | RunEnding):
        return cause
    return None


@asynccontextmanager
async def suspensions_pass() -> AsyncIterator[None]:
    """Re-raise a Castor suspension the framework wrapped (a task group's ``BaseExceptionGroup``) as itself,
    and a carried run-ending error as the error."""
    try:
        yield
    except BaseException as error:
        found = first_suspension(error)
        if isinstance(found, RunEnding):
            raise found.error from None
        if found is not None and found is not error:
            raise found from None
        raise


# The event loop of the Castor run whose framework loop ``in_thread`` runs in a worker thread.
_RUN_LOOP: contextvars.ContextVar[asyncio.AbstractEventLoop | None] = contextvars.ContextVar(
    "castor_framework_loop", default=None
)


_Passing = RunEnding  # a run-ending Castor error carried through a synchronous framework's except Exception


async def in_thread(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a synchronous framework loop in a thread of its own; its guarded calls are answered on this loop.

    Not the loop's default executor: a loop waiting for a model call answered there would hold one of its
    few workers, and as many concurrent runs as workers would wait for each other for ever."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()
    token = _RUN_LOOP.set(loop)
    context = contextvars.copy_context()  # the run's context: the thread's syscalls are this run's
    _RUN_LOOP.reset(token)

    def settle(result: Any, error: BaseException | None) -> None:
        if done.done():  # the run was cancelled meanwhile
            return
        if error is None:
            done.set_result(result)
        else:
            done.set_exception(error)

    def target() -> None:
        try:
            result = context.run(func, *args, **kwargs)
        except _Passing as passing:
            loop.call_soon_threadsafe(settle, None, passing.error)
        except BaseException as error:  # a suspension too: it is the run's to handle
            loop.call_soon_threadsafe(settle, None, error)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=target, name=f"castor-{getattr(func, '__name__', 'framework')}", daemon=True).start()
    return await done


def note_run_loop() -> None:
    """Inside a Castor run, on its loop: take the running loop as the run's in the caller's context, so that
    synchronous framework code the framework itself hands to threads (``asyncio.to_thread`` copies the
    context: CrewAI's ``akickoff`` runs each step of its agents so) has its guarded calls answered there, as
    under ``in_thread``. Elsewhere (no run, no running loop) it does nothing. It stays set for the rest of
    the caller's task: a run's task, which it names rightly."""
    if current_run.get() is None:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    if _RUN_LOOP.get() is not loop:
        _RUN_LOOP.set(loop)


def run_loop(what: str, runner: str) -> asyncio.AbstractEventLoop:
    """The loop of the run whose synchronous framework code (under ``in_thread``) is calling: ``what`` (the
    call, for the error) is to be answered there. ``UnsupportedError`` outside such a thread (no run's loop
    noted: ``in_thread``, ``note_run_loop``), and on an event loop (the run's own, say), which a synchronous
    wait would block (``runner``: what to await instead)."""
    loop = _RUN_LOOP.get()
    try:
        asyncio.get_running_loop()
        on_a_loop = True
    except RuntimeError:
        on_a_loop = False
    if on_a_loop:
        raise UnsupportedError(
            f"{what} on an event loop, which it would block: call `await {runner}` inside a Castor run"
        )
    if loop is None:
        raise UnsupportedError(
            f"{what} with no Castor run's loop to answer it: call `await {runner}` inside a Castor run"
        )
    return loop
