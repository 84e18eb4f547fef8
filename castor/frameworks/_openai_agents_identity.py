"""A skipped tool call's identity in the run context, as the Agents SDK records it, for a late start
(``castor.frameworks._openai_agents_resume``)."""

from __future__ import annotations

import hashlib
import json
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from agents import RunContextWrapper
from agents.exceptions import ModelBehaviorError
from agents.run_context import _ToolInvocationRecord
from openai.types.responses import ResponseFunctionToolCall

from castor.frameworks._openai_agents_json import loads


class Identity:
    """How the SDK records a call of one tool in the run context (``RunContextWrapper._tool_invocation_status``):
    its call id, the tool's approval scope and a SHA-256 fingerprint of the call, which the SDK keeps to refuse
    a call id used again for another call (and ``to_state()`` serialises).

    The SDK's own reads the call's dump three times and normalises it value by value: a third of a late start.
    A function call's fingerprint is the hash of its JSON ``{"approval_scope", "arguments", "type"}`` with
    sorted keys (the SDK's ``_fingerprint``), the arguments parsed (``_normalize_arguments``: for JSON data
    the parsed value, whose keys ``sort_keys`` orders as the SDK's normalisation does). So the scope is taken
    from the SDK once per tool (``identity``: the SDK's scope of a function call is a hash of the tool's
    lookup key alone), each call's fingerprint made here, and the first call an identity sees is recorded by
    the SDK itself and compared (another SDK's identity: every call is left to the SDK). A call
    the fast way does not cover (no call id, a caller, a key the SDK may hash beyond the call's own,
    arguments that are not plain JSON data: the SDK keeps ``NaN`` text unparsed) is recorded by the SDK."""

    def __init__(self, lookup_key: Any) -> None:
        self.lookup_key = lookup_key
        self.scope: str | None = None  # the tool's approval scope, once the SDK's own record agreed
        self.hashed: Any = None  # SHA-256 of the fingerprint's JSON up to the arguments (``_hasher``)
        self.checked = False

    def record(self, wrapper: RunContextWrapper[Any], call: ResponseFunctionToolCall, dumped: Any) -> bool:
        """Record ``call`` (journaled as ``dumped``) in ``wrapper``; False where the SDK raises (a call id
        used before for another call)."""
        call_id, text = call.call_id, call.arguments
        arguments = _plain_arguments(text) if call.caller is None and type(call_id) is str and call_id \
            and dumped.get("type") == "function_call" and "arguments" in dumped and dumped.keys() <= _CALL_KEYS \
            else None
        if arguments is not None and self.scope is not None:
            scope, hashed = self.scope, self.hashed
            if hashed is not None:  # the payload's JSON is its start, the arguments', its end
                hashed = hashed.copy()
                hashed.update("".join(_C_ENCODE(arguments[0], 0)).encode("utf-8") + _END)  # type: ignore[misc]
                fingerprint = hashed.hexdigest()
            else:
                fingerprint = _fingerprint({"approval_scope": scope, "arguments": arguments[0],
                                            "type": "function_call"})
            known = wrapper._tool_invocations.get(call_id)
            if known is None:
                wrapper._tool_invocations[call_id] = _ToolInvocationRecord(
                    invocation_type="function_call", approval_scope=self.scope, fingerprint=fingerprint)
                return True
            return (known.invocation_type, known.approval_scope, known.fingerprint) == (
                "function_call", self.scope, fingerprint)
        try:
            wrapper._tool_invocation_status(dumped, tool_lookup_key=self.lookup_key)
        except ModelBehaviorError:
            return False
        if arguments is not None and not self.checked:  # the SDK's record of this call against the one made here
            self.checked = True
            made = wrapper._tool_invocations.get(call_id)
            if made is not None and made.invocation_type == "function_call" and made.fingerprint == _fingerprint(
                {"approval_scope": made.approval_scope, "arguments": arguments[0], "type": "function_call"}
            ):
                self.hashed = _hasher(made.approval_scope)
                self.scope = made.approval_scope
        return True


# Each tool's identity by its lookup key, kept from one late start to the next: the SDK's own record of the
# first call (210k instructions, as much as eight calls recorded here) is made once per tool and process,
# not once per late start. Cleared when full (a process with that many tools: they are learnt again).
_known: dict[Any, Identity] = {}


def identity(lookup_key: Any) -> Identity:
    """The identity of the tool whose lookup key (the SDK's ``get_function_tool_lookup_key_for_tool``) is
    ``lookup_key``."""
    found = _known.get(lookup_key)
    if found is None:
        if len(_known) >= 1024:
            _known.clear()
        found = _known[lookup_key] = Identity(lookup_key)
    return found


# The keys of a function call's JSON the SDK's fingerprint reads none of but its type and arguments (any
# other, an extra key a provider added among them, may be one of its semantic fields).
_CALL_KEYS = frozenset({"type", "arguments", "call_id", "name", "namespace", "id", "status"})


def _plain_arguments(text: Any) -> tuple[Any] | None:
    """A call's arguments parsed, as the SDK's fingerprint holds them (in a tuple: JSON ``null`` is a value);
    None for text the SDK keeps as it is or may read otherwise (not JSON, a ``NaN`` or ``Infinity``)."""
    if type(text) is not str or "NaN" in text or "Infinity" in text:
        return None
    try:
        return (loads(text),)
    except ValueError:
        return None


# The SDK's encoder settings (``json.dumps(ensure_ascii=False, sort_keys=True, separators=(",", ":"))``).
_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))
# The C encoder ``JSONEncoder.encode`` builds at every call, built once: ``encode`` makes it anew with its
# float formatter closure (32k instructions a fingerprint against 8k). Without the circular-reference check
# (``markers``: None): the payload is a call's arguments as ``loads`` parsed them, which hold no cycle.
_C_ENCODE = None if c_make_encoder is None else c_make_encoder(
    None, _ENCODER.default, encode_basestring, None, _ENCODER.key_separator, _ENCODER.item_separator,
    _ENCODER.sort_keys, _ENCODER.skipkeys, _ENCODER.allow_nan)


def _fingerprint(payload: dict[str, Any]) -> str:
    """The SDK's ``_fingerprint``: SHA-256 of the compact JSON with sorted keys."""
    text = _ENCODER.encode(payload) if _C_ENCODE is None else "".join(_C_ENCODE(payload, 0))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_END = b',"type":"function_call"}'  # a function call's fingerprint JSON after its arguments (keys sorted)


def _hasher(scope: str) -> Any:
    """A SHA-256 object fed the JSON of a function call's fingerprint payload up to its arguments' value
    (its keys sorted: ``approval_scope``, ``arguments``, ``type``), copied for each call: a call's fingerprint
    then encodes and hashes its arguments alone (12.6k instructions against 23k). None when a payload's
    fingerprint made so is not ``_fingerprint``'s (another encoder)."""
    if _C_ENCODE is None:
        return None
    start = ('{"approval_scope":' + encode_basestring(scope) + ',"arguments":').encode("utf-8")
    check = hashlib.sha256(start)
    check.update(b'{"a":[1,"\xc3\xa9"]}' + _END)
    sample = {"approval_scope": scope, "arguments": {"a": [1, "é"]}, "type": "function_call"}
    if check.hexdigest() != _fingerprint(sample):
        return None
    return hashlib.sha256(start)
