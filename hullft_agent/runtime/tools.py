"""Tool calling: OpenAI-style tool definitions, `tool_choice`, and tool calls parsed from a model's text.

A local model calls a tool by writing it out. The convention is Hermes/Qwen's: one JSON object per call
inside `<tool_call>...</tool_call>` tags (what the fallback prompt in `prompt.py` asks for, and what
many tool-trained chat templates use); an answer that is nothing but a JSON object naming a known tool
counts too. A tokenizer that ships a `response_template` is parsed with transformers' own
`parse_response` instead. Parsing never raises: text that looks like a call but is not a valid one
becomes an `InvalidToolCall` that says what was wrong, so a caller can report it back to the model.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hullft_agent.errors import InvalidArgumentError, InvalidTypeError

logger = logging.getLogger(__name__)

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
#: The `tool_choice` values besides a named function.
TOOL_CHOICES = ("none", "auto", "required")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:")
_CALL_KEYS = frozenset({"name", "arguments", "parameters", "id", "type"})


def new_call_id() -> str:
    """A fresh tool-call id in OpenAI's style (`call_` + 24 hex digits)."""
    return f"call_{uuid.uuid4().hex[:24]}"


# ---------------------------------------------------------------------------------------------- definitions
def check_tools(tools: Any) -> list[dict[str, Any]]:
    """Tool definitions as `{"type": "function", "function": {"name", "description", "parameters"}}`.

    Accepts OpenAI's form or a bare function dict (`{"name", "description", "parameters"}`); the
    parameters must be a JSON schema of type object (missing: no parameters). Names must be unique and
    made of letters, digits and `_-.:` (64 at most). An error names the bad tool; None gives [].
    """
    if tools is None:
        return []
    if not isinstance(tools, Sequence) or isinstance(tools, (str, bytes)):
        raise InvalidTypeError(f"tools must be a list of tool definitions, got {type(tools).__name__}")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise InvalidTypeError(f"{where} must be a dict like {{'type': 'function', 'function': {{...}}}}, "
                                   f"got {type(tool).__name__}")
        if "function" in tool:
            if tool.get("type", "function") != "function":
                raise InvalidArgumentError(f"{where} has type {tool.get('type')!r}; only 'function' tools are supported")
            function = tool["function"]
        else:
            function = tool
        if not isinstance(function, Mapping):
            raise InvalidTypeError(f"{where}['function'] must be a dict with 'name', got {type(function).__name__}")
        name = function.get("name")
        if not isinstance(name, str) or not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
            raise InvalidArgumentError(f"{where} has name {name!r}; a tool name is 1-64 letters, digits or '_-.:'")
        where = f"{where} ({name!r})"
        if name in seen:
            raise InvalidArgumentError(f"{where}: another tool already has this name")
        seen.add(name)
        description = function.get("description") or ""
        if not isinstance(description, str):
            raise InvalidTypeError(f"{where}: description must be a string, got {type(description).__name__}")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        if not isinstance(parameters, Mapping):
            raise InvalidTypeError(f"{where}: parameters must be a JSON schema dict, got {type(parameters).__name__}")
        if parameters.get("type", "object") != "object":
            raise InvalidArgumentError(f"{where}: parameters must be a JSON schema of type 'object', "
                                       f"got type {parameters.get('type')!r}")
        if not isinstance(parameters.get("properties", {}), Mapping):
            raise InvalidTypeError(f"{where}: parameters['properties'] must be a dict")
        required = parameters.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise InvalidTypeError(f"{where}: parameters['required'] must be a list of property names")
        parameters = {"type": "object", **copy.deepcopy(dict(parameters))}
        parameters.setdefault("properties", {})
        out.append({"type": "function", "function": {"name": name, "description": description,
                                                     "parameters": parameters}})
    return out


def check_tool_choice(choice: Any, tools: Sequence[Mapping[str, Any]] | None) -> str | dict[str, Any]:
    """'none' | 'auto' | 'required' | `{"type": "function", "function": {"name": ...}}`, checked against `tools`.

    'required' and a named tool need tools, and the name must be one of them. The Responses-API form
    `{"type": "function", "name": ...}` is accepted and returned in the chat form.
    """
    names = [t["function"]["name"] for t in tools or []]
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise InvalidArgumentError(f"tool_choice must be one of {list(TOOL_CHOICES)} or "
                                       f"{{'type': 'function', 'function': {{'name': ...}}}}, got {choice!r}")
        if choice == "required" and not names:
            raise InvalidArgumentError("tool_choice='required' needs at least one tool (tools=[...])")
        return choice
    if not isinstance(choice, Mapping) or choice.get("type", "function") != "function":
        raise InvalidArgumentError(f"tool_choice must be one of {list(TOOL_CHOICES)} or "
                                   f"{{'type': 'function', 'function': {{'name': ...}}}}, got {choice!r:.120}")
    function = choice.get("function", choice)
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"tool_choice names no function: {choice!r:.120}")
    if name not in names:
        raise InvalidArgumentError(f"tool_choice names the tool {name!r}, which is not among the tools "
                                   f"{names}")
    return {"type": "function", "function": {"name": name}}


def forced_tool_name(choice: str | Mapping[str, Any]) -> str | None:
    """The tool a checked `tool_choice` forces by name, else None."""
    return choice["function"]["name"] if isinstance(choice, Mapping) else None


# ---------------------------------------------------------------------------------------------- calls
@dataclass
class ToolCall:
    """One parsed tool call: `arguments` is a dict, already cast to the tool's schema where safe."""

    id: str
    name: str
    arguments: dict[str, Any]

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI chat-completions form (`arguments` as a JSON string)."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}}

    def to_message(self) -> dict[str, Any]:
        """The form a conversation's assistant message carries in `tool_calls`."""
        return {"id": self.id, "name": self.name, "arguments": copy.deepcopy(self.arguments)}


@dataclass
class InvalidToolCall:
    """Text that was meant as a tool call but is not a valid one; `error` says why.

    `name` is the tool's name when it could be read, `arguments` the raw text of the arguments (or of
    the whole call when it did not parse).
    """

    id: str
    name: str | None
    arguments: str | None
    error: str


def tool_call_text(name: str, arguments: Mapping[str, Any]) -> str:
    """A call as one line of plain text, `name({"arg": ...})`: how memory rows and adaptation contexts hold it."""
    return f"{name}({json.dumps(dict(arguments), ensure_ascii=False, sort_keys=True, default=str)})"


def render_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """A call in the text form the model is asked to write: `<tool_call>\\n{json}\\n</tool_call>`."""
    body = json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def parse_tool_calls(text: str, tools: Sequence[Mapping[str, Any]] | None, *,
                     response_template: Mapping[str, Any] | None = None,
                     prefix: str = "") -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """Split a model's answer into its content and the tool calls it makes; never raises on bad text.

    - With a `response_template` (a tokenizer's, for transformers' `parse_response`; `prefix` is the
      prompt it was generated after) that parser is tried first; where it fails or finds no calls the
      Hermes rules below apply.
    - Every `<tool_call>...</tool_call>` block (an unclosed last block too) holds one JSON object
      `{"name", "arguments"}` (`"parameters"` is accepted for `"arguments"`, arguments given as a JSON
      string are decoded) or a list of them; the content is the text outside the blocks.
    - Without blocks, an answer that is only a JSON object (or a list of them) of that shape, optionally in
      a ``` fence, naming a known tool is a call; other JSON stays content.
    - A call of an unknown tool, a block that is not JSON, or arguments that are not an object are
      `InvalidToolCall`s. Arguments are cast to the tool's JSON schema where that is lossless
      (`"7"` → 7 for an integer, 3 → "3" for a string, ...); they are not otherwise validated.
    """
    if not isinstance(text, str):
        raise InvalidTypeError(f"text must be a string, got {type(text).__name__}")
    by_name = {t["function"]["name"]: t["function"] for t in check_tools(tools)}
    template_error = None
    if response_template is not None:
        parsed = _parse_with_template(text, by_name, response_template, prefix)
        if isinstance(parsed, str):
            template_error = parsed
        elif parsed is not None and (parsed[1] or parsed[2]):
            return parsed
    if TOOL_CALL_OPEN in text:
        return _parse_hermes(text, by_name)
    plain = _parse_plain_json(text, by_name)
    if plain is not None:
        return plain
    if template_error is not None:  # the template saw a call region it could not read
        return text.strip(), [], [InvalidToolCall(new_call_id(), None, text, template_error)]
    return text.strip(), [], []


def _parse_hermes(text: str, by_name: Mapping[str, Mapping[str, Any]]) -> tuple[str, list[ToolCall],
                                                                               list[InvalidToolCall]]:
    content: list[str] = []
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    pos = 0
    while True:
        start = text.find(TOOL_CALL_OPEN, pos)
        if start < 0:
            content.append(text[pos:])
            break
        content.append(text[pos:start])
        body_start = start + len(TOOL_CALL_OPEN)
        end = text.find(TOOL_CALL_CLOSE, body_start)
        closed = end >= 0
        body = text[body_start:end if closed else len(text)]
        pos = end + len(TOOL_CALL_CLOSE) if closed else len(text)
        body = _strip_fence(body.strip())
        where = "the <tool_call> block" + ("" if closed else " (never closed: the answer ended inside it)")
        try:
            value = json.loads(body)
        except json.JSONDecodeError as exc:
            invalid.append(InvalidToolCall(new_call_id(), None, body or None, f"{where} is not valid JSON: {exc}"))
            continue
        for item in value if isinstance(value, list) else [value]:
            _add_call(item, by_name, calls, invalid, where=where)
    return _join(content), calls, invalid


def _parse_plain_json(text: str, by_name: Mapping[str, Mapping[str, Any]]
                      ) -> tuple[str, list[ToolCall], list[InvalidToolCall]] | None:
    body = _strip_fence(text.strip())
    if not body.startswith(("{", "[")):
        return None
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    items = value if isinstance(value, list) else [value]
    if not items or not all(_looks_like_call(item, by_name) for item in items):
        return None
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for item in items:
        _add_call(item, by_name, calls, invalid, where="the JSON answer")
    return "", calls, invalid


def _looks_like_call(item: Any, by_name: Mapping[str, Any]) -> bool:
    """A JSON answer counts as a call when it has only call keys and names a known tool (or has
    arguments, so it was meant as one)."""
    if isinstance(item, Mapping) and isinstance(item.get("function"), Mapping):
        item = item["function"]
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str) or not set(item) <= _CALL_KEYS:
        return False
    return item["name"] in by_name or "arguments" in item or "parameters" in item


def _add_call(item: Any, by_name: Mapping[str, Mapping[str, Any]], calls: list[ToolCall],
              invalid: list[InvalidToolCall], *, where: str) -> None:
    """Append `item` (one decoded call object) to `calls`, or say why it is not one in `invalid`."""
    if isinstance(item, Mapping) and isinstance(item.get("function"), Mapping):
        item = {**item["function"], **({"id": item["id"]} if "id" in item else {})}
    raw = json.dumps(item, ensure_ascii=False) if not isinstance(item, str) else item
    call_id = item.get("id") if isinstance(item, Mapping) and isinstance(item.get("id"), str) and item["id"] \
        else new_call_id()
    if not isinstance(item, Mapping):
        invalid.append(InvalidToolCall(call_id, None, raw,
                                       f"{where} holds {type(item).__name__} JSON, not an object "
                                       '{"name": ..., "arguments": {...}}'))
        return
    name = item.get("name")
    args = item.get("arguments", item.get("parameters", {}))
    args_text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    if not isinstance(name, str) or not name:
        invalid.append(InvalidToolCall(call_id, None, raw, f'{where} has no "name" of a tool'))
        return
    if name not in by_name:
        known = ", ".join(sorted(by_name)) or "none"
        invalid.append(InvalidToolCall(call_id, name, args_text,
                                       f"{where} calls the unknown tool {name!r} (the tools are: {known})"))
        return
    if args is None:
        args = {}
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            invalid.append(InvalidToolCall(call_id, name, args_text,
                                           f"the arguments of {name!r} are a string that is not JSON: {exc}"))
            return
    if not isinstance(args, Mapping):
        invalid.append(InvalidToolCall(call_id, name, args_text,
                                       f"the arguments of {name!r} must be a JSON object, got {type(args).__name__}"))
        return
    calls.append(ToolCall(call_id, name, cast_arguments(args, by_name[name].get("parameters"))))


def _parse_with_template(text: str, by_name: Mapping[str, Mapping[str, Any]], template: Mapping[str, Any],
                         prefix: str) -> tuple[str, list[ToolCall], list[InvalidToolCall]] | str | None:
    """The tokenizer's own response template through transformers' parser: the parsed answer, the
    parser's error, or None where transformers has no response parsing."""
    try:
        from transformers.utils.chat_parsing import parse_response
    except ImportError:  # transformers before response templates
        return None
    tools = [{"type": "function", "function": dict(f)} for f in by_name.values()]
    try:
        message = parse_response(text, dict(template), prefix=prefix, tools=tools)
    except Exception as exc:  # the template's parser rejects the text: the caller tries the Hermes rules
        logger.debug("the tokenizer's response template could not parse the answer: %s", exc)
        return f"the tokenizer's response template could not parse the answer: {exc}"
    content = message.get("content") if isinstance(message, Mapping) else None
    content = content if isinstance(content, str) else ""
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for item in (message.get("tool_calls") or []) if isinstance(message, Mapping) else []:
        _add_call(item, by_name, calls, invalid, where="the parsed tool call")
    return content.strip(), calls, invalid


def _strip_fence(body: str) -> str:
    """The inside of a ```/```json code fence around `body`, else `body`."""
    if body.startswith("```") and body.endswith("```") and len(body) >= 6:
        inner = body[3:-3]
        first, _, rest = inner.partition("\n")
        return (rest if first.strip().isalpha() or not first.strip() else inner).strip()
    return body


def _join(parts: list[str]) -> str:
    return "\n".join(p.strip() for p in parts if p.strip())


# ---------------------------------------------------------------------------------------------- casting
def schema_types(schema: Any) -> list[str]:
    """The JSON types a (sub)schema allows: `type` (a name or a list), `anyOf`/`oneOf` branches, enum values."""
    if not isinstance(schema, Mapping):
        return []
    declared = schema.get("type")
    types = [declared] if isinstance(declared, str) else [t for t in declared or [] if isinstance(t, str)]
    for key in ("anyOf", "oneOf"):
        for branch in schema.get(key) or []:
            types += [t for t in schema_types(branch) if t not in types]
    if not types and isinstance(schema.get("enum"), list):
        for value in schema["enum"]:
            name = _json_type(value)
            if name not in types:
                types.append(name)
    return types


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def cast_arguments(arguments: Mapping[str, Any], parameters: Any) -> dict[str, Any]:
    """A copy of `arguments` with values cast to their property's type where the cast loses nothing.

    A string holding a number, boolean, null, object or array becomes that value when the property
    does not allow strings; a whole float becomes an int for an integer property; a number becomes
    its text for a string-only property. Nested objects are cast by their own properties; anything
    else is kept as given.
    """
    properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
    out = dict(arguments)
    if not isinstance(properties, Mapping):
        return out
    for key, value in out.items():
        if key in properties:
            out[key] = _cast(value, properties[key])
    return out


def _cast(value: Any, schema: Any) -> Any:
    types = schema_types(schema)
    if not types or _json_type(value) in types or (_json_type(value) == "integer" and "number" in types):
        if isinstance(value, Mapping) and "object" in types:
            return cast_arguments(value, schema)
        return value
    if isinstance(value, str):
        raw = value.strip()
        for name in types:
            cast = _from_text(raw, name)
            if cast is not _NO_CAST:
                return cast_arguments(cast, schema) if isinstance(cast, Mapping) else cast
        return value
    if isinstance(value, float) and "integer" in types and value.is_integer():
        return int(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and types == ["string"]:
        return json.dumps(value)
    return value


_NO_CAST = object()


def _from_text(raw: str, name: str) -> Any:
    try:
        if name == "integer":
            if raw.lstrip("-").isdigit():
                return int(raw)
            number = float(raw)
            return int(number) if number.is_integer() and math.isfinite(number) else _NO_CAST
        if name == "number":
            number = float(raw)
            if not math.isfinite(number):
                return _NO_CAST
            return int(raw) if raw.lstrip("-").isdigit() else number
        if name == "boolean" and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        if name == "null" and raw in ("null", "None"):
            return None
        if name in ("object", "array"):
            decoded = json.loads(raw)
            if isinstance(decoded, dict if name == "object" else list):
                return decoded
    except (ValueError, OverflowError):
        pass
    return _NO_CAST
