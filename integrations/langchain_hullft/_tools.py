"""LangChain tools and tool calls ↔ the core runtime's OpenAI-style tools and `ToolCall`s."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages.tool import (
    InvalidToolCall as LCInvalidToolCall,
)
from langchain_core.messages.tool import (
    ToolCall as LCToolCall,
)
from langchain_core.messages.tool import (
    ToolCallChunk,
    invalid_tool_call,
    tool_call,
    tool_call_chunk,
)
from langchain_core.utils.function_calling import convert_to_openai_tool

from hullft_agent.errors import InvalidArgumentError, InvalidTypeError
from hullft_agent.runtime.tools import InvalidToolCall, ToolCall, check_tool_choice, check_tools

logger = logging.getLogger(__name__)


def openai_tools(tools: Sequence[Any] | None, *, strict: bool | None = None) -> list[dict[str, Any]]:
    """LangChain tools, functions, pydantic models, TypedDicts or OpenAI dicts as checked OpenAI tool dicts.

    A later tool with the name of an earlier one is left out (with a warning): a model calls tools by name.

    `strict` (OpenAI's flag) is accepted for compatibility and otherwise unused: a forced call follows a
    simple schema anyway, and the definitions keep only name, description and parameters."""
    if not tools:
        return []
    if not isinstance(tools, Sequence) or isinstance(tools, (str, bytes)):
        raise InvalidTypeError(f"tools must be a list of tools, got {type(tools).__name__}")
    converted: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        try:
            definition = convert_to_openai_tool(tool, strict=strict)
        except Exception as exc:
            raise InvalidArgumentError(f"tools[{i}] ({tool!r:.60}) cannot be turned into a function tool: {exc}") from exc
        name = (definition.get("function") or {}).get("name")
        if name in converted:  # e.g. a pydantic model and its JSON schema: the model sees one tool per name
            logger.warning("tools[%d] has the name %r of an earlier tool; the earlier one is kept", i, name)
            continue
        converted[name] = definition
    return check_tools(list(converted.values()))


def core_tool_choice(choice: Any, tools: Sequence[Mapping[str, Any]]) -> str | dict[str, Any]:
    """LangChain's `tool_choice` as the runtime's: None → 'auto', 'any' → 'required', a tool's name or
    True (with exactly one tool) → that tool, False → 'none'; OpenAI's values pass through (checked)."""
    if choice is None:
        return "auto"
    if choice is True:
        if len(tools) != 1:
            raise InvalidArgumentError(f"tool_choice=True forces the one bound tool, but {len(tools)} are bound; "
                                       "name the tool instead")
        choice = tools[0]["function"]["name"]
    elif choice is False:
        choice = "none"
    if choice == "any":
        choice = "required"
    if isinstance(choice, str) and choice not in ("none", "auto", "required"):
        choice = {"type": "function", "function": {"name": choice}}
    return check_tool_choice(choice, tools)


def langchain_tool_calls(calls: Sequence[ToolCall]) -> list[LCToolCall]:
    return [tool_call(name=c.name, args=dict(c.arguments), id=c.id) for c in calls]


def langchain_invalid_tool_calls(calls: Sequence[InvalidToolCall]) -> list[LCInvalidToolCall]:
    return [invalid_tool_call(name=c.name, args=c.arguments, id=c.id, error=c.error) for c in calls]


def tool_call_chunks(calls: Sequence[ToolCall]) -> list[ToolCallChunk]:
    """The valid calls of a streamed answer, for its last chunk.

    LangChain rebuilds a merged stream's calls from these chunks alone and reads their arguments
    leniently (partial JSON), so an invalid call cannot be carried here without coming back as a
    valid-looking one; a stream's invalid calls, with their errors, are in
    `response_metadata['hullft']['invalid_tool_calls']`.
    """
    return [tool_call_chunk(name=c.name, args=json.dumps(c.arguments, ensure_ascii=False), id=c.id, index=i)
            for i, c in enumerate(calls)]
