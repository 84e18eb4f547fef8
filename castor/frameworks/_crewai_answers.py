"""A journaled CrewAI answer read as CrewAI's loop reads it, for a late start (``_crewai_resume``).

A late start reads every skipped step's answer (text, ReAct mode) for the tool it asks for and its input,
and keys each call as CrewAI's tool usage and its repeated-call check key it. CrewAI's parser
(``process_llm_response``) costs about 54k instructions an answer, most of them in ``json_repair``, whose
first move on valid JSON is ``json.dumps(json.loads(text))``; the JSON texts of the keys cost another 50k
a step when made with ``json.dumps`` (its encoder built anew at each call, a long observation escaped again
at each step). Here the usual answer (an action, its input a JSON object) is read in one pass, as CrewAI
reads it, and anything else is left to CrewAI's own parser; the keys' JSON is made by the pieces
``json.dumps`` joins. Tests hold each reading to CrewAI's and ``json.dumps``'s on a range of answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from json import encoder as _json_encoder
from typing import Any

from crewai.agents.constants import ACTION_INPUT_REGEX, FINAL_ANSWER_ACTION
from crewai.agents.parser import AgentAction
from crewai.utilities.agent_utils import process_llm_response

# json.dumps' own string escaping (ensure_ascii): each character escaped by itself, so the JSON of a
# concatenation is the pieces' JSON joined (``joined``).
encode_string = _json_encoder.encode_basestring_ascii
# A decoder of json.loads' defaults, whose raw_decode reads a text that starts with its JSON (json.loads also
# skips whitespace around it, through the regex and frames of ``decode``).
_DECODER = json.JSONDecoder()
# An encoder of json.dumps' defaults, built once (json.dumps builds one at every call); None where the C
# encoder is missing (another interpreter), where json.dumps is used.
_MAKE_ENCODER = getattr(_json_encoder, "c_make_encoder", None)  # CPython's, not in the typing stubs
# markers, default, encoder, indent, key and item separators, sort_keys, skipkeys, allow_nan: JSONEncoder's
# own arguments to it for json.dumps' defaults (no markers: what json.loads made holds no cycle)
_ENCODE = None if _MAKE_ENCODER is None else _MAKE_ENCODER(None, None, encode_string, None, ": ", ", ",
                                                           False, False, True)


def dumps(value: Any) -> str:
    """``json.dumps(value)`` (its defaults) of JSON data as ``json.loads`` makes it (no cycles)."""
    if _ENCODE is None:
        return json.dumps(value)
    return "".join(_ENCODE(value, 0))


def joined(head: str, tail_json: str) -> str:
    """``encode_string(head + tail)`` from ``tail_json``, ``encode_string(tail)`` made once."""
    return encode_string(head)[:-1] + tail_json[1:]


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field through object.__setattr__
class Action:
    """An answer CrewAI reads as a tool action: its text (what the loop appends the observation to), the tool
    as asked for (CrewAI's cleaned name), its input as CrewAI hands it on (the text ``json_repair`` made),
    that input read as JSON, and ``json.dumps`` of that (how CrewAI's tools handler keys the call in its
    cache; None if not a JSON object)."""

    text: str
    tool: str
    tool_input: str
    arguments: Any
    arguments_json: str | None


def action_of(text: str, stop_words: bool) -> Action | None:
    """The tool action CrewAI reads in ``text`` (``process_llm_response(text, stop_words)``), None if it
    reads none (a final answer, an answer it cannot parse) or its input is not JSON."""
    read = _usual(text)
    if read is not None:
        return read
    try:
        action = process_llm_response(text, stop_words)
    except Exception:  # CrewAI's parser error: the loop feeds it back to the model
        return None
    if not isinstance(action, AgentAction):
        return None
    tool_input = action.tool_input
    try:  # what CrewAI's tool usage tries first; the repairs it tries next are not followed here
        arguments = json.loads(tool_input) if isinstance(tool_input, str) else None
    except ValueError:
        return None
    keyed = dumps(arguments) if type(arguments) is dict else None
    return Action(action.text, action.tool, tool_input, arguments, keyed)


def _usual(text: Any) -> Action | None:
    """CrewAI's reading of ``text`` when it is the usual action, None when it is anything else.

    CrewAI's ``parse`` (either way ``process_llm_response`` reads stop words, it returns what ``parse`` does):
    no final answer in the text, the action and its input by CrewAI's pattern, the action's name stripped of
    spaces and asterisks, the input stripped of spaces and quotes, ``\"\"\"`` made ``\"``, then
    ``json_repair.repair_json``, which answers valid JSON as ``json.dumps(json.loads(input))``; CrewAI keeps
    that unless it is empty, ``{}`` or ``\"\"`` or a list from a text that was none. Here: the input a valid
    JSON object with at least one member (the rest, a list, a repaired input, go to CrewAI's parser)."""
    if type(text) is not str or FINAL_ANSWER_ACTION in text:
        return None
    found = ACTION_INPUT_REGEX.search(text)
    if found is None:
        return None
    tool_input = found.group(2).strip().strip(" ").strip('"')
    if tool_input.startswith("[") and tool_input.endswith("]"):
        return None
    tool_input = tool_input.replace('"""', '"')
    try:  # json.loads' reading when the JSON is the whole text
        arguments, end = _DECODER.raw_decode(tool_input)
    except Exception:  # not valid JSON (or too deep): CrewAI's repair decides
        return None
    if end != len(tool_input) or type(arguments) is not dict or not arguments:
        return None  # text around it (whitespace json.loads would skip): CrewAI's parser decides
    tool_input = dumps(arguments)
    return Action(text, found.group(1).strip().strip("*").strip(), tool_input, arguments, tool_input)
