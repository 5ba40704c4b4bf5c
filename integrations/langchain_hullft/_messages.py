"""LangChain messages → chat-template conversations, adaptation contexts and memory steps.

Pure functions on message objects (no model, no torch), so they are easy to test on their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from hullft_agent.errors import InvalidArgumentError, InvalidTypeError, UnsupportedMessageError
from hullft_agent.runtime.prompt import ASSISTANT, SYSTEM, TOOL, USER
from hullft_agent.runtime.tools import new_call_id, tool_call_text

_CHAT_ROLES = {
    "system": SYSTEM,
    "developer": SYSTEM,
    "user": USER,
    "human": USER,
    "assistant": ASSISTANT,
    "ai": ASSISTANT,
    "tool": TOOL,
    "function": TOOL,
}
_TEXT_BLOCKS = {"text", "text-plain", "reasoning"}


def content_text(content: Any, *, where: str) -> str:
    """The text of a message's content: a string, or a list of text blocks (others are refused)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise UnsupportedMessageError(f"{where}: content must be a str or a list of blocks, got {type(content).__name__}")
    parts: list[str] = []
    for i, block in enumerate(content):
        if isinstance(block, str):
            parts.append(block)
            continue
        if not isinstance(block, dict):
            raise UnsupportedMessageError(f"{where}: content block {i} is a {type(block).__name__}, not a dict")
        kind = block.get("type")
        if kind in _TEXT_BLOCKS:
            text = block.get("text", block.get("reasoning", ""))
            if kind != "reasoning":  # reasoning traces are not replayed to the model
                parts.append(str(text))
            continue
        if kind in {"tool_use", "tool_call", "tool_call_chunk", "server_tool_call", "server_tool_result"}:
            continue  # rendered from message.tool_calls instead
        raise UnsupportedMessageError(
            f"{where}: content block {i} has type {kind!r}; ChatHullFT is text-only "
            "(images, audio, files and other media are not supported)"
        )
    return "".join(parts)


def render_tool_calls(tool_calls: Sequence[dict[str, Any]]) -> str:
    """Tool calls as text lines, `name({"a": 1})`, the form the runtime logs and adapts on."""
    return "\n".join(tool_call_text(call.get("name", "?"), call.get("args") or {}) for call in tool_calls)


def to_conversation(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """Messages as the runtime's conversation (`[{"role", "content", ...}]`).

    System → system, Human → user, AI → assistant (its tool calls as structured `tool_calls`:
    `{"id", "name", "arguments"}`), Tool → tool with its `tool_call_id` and `name` (an error result's
    content starts with "Error: "), Function → tool with its `name`, ChatMessage by its role. The
    runtime renders calls and results through the chat template or as text (docs/runtime.md).
    Anything else raises `UnsupportedMessageError` naming the message.
    """
    if not isinstance(messages, (list, tuple)):
        raise InvalidTypeError(f"messages must be a list of LangChain messages, got {type(messages).__name__}")
    if not messages:
        raise InvalidArgumentError("ChatHullFT needs at least one message; got an empty message list")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}] ({type(message).__name__})"
        role = message_role(message, where=where)
        entry: dict[str, Any] = {"role": role, "content": content_text(message.content, where=where)}
        if isinstance(message, AIMessage) and message.tool_calls:
            entry["tool_calls"] = [{"id": call.get("id") or new_call_id(), "name": call["name"],
                                    "arguments": dict(call.get("args") or {})} for call in message.tool_calls]
        elif isinstance(message, (ToolMessage, FunctionMessage)):
            if getattr(message, "status", "success") == "error" and not entry["content"].lower().startswith("error"):
                entry["content"] = "Error: " + entry["content"]
            for key in ("tool_call_id", "name"):
                value = getattr(message, key, None)
                if isinstance(value, str) and value:
                    entry[key] = value
        out.append(entry)
    return out


def message_role(message: Any, *, where: str = "message") -> str:
    """The chat-template role of a message, or `UnsupportedMessageError`."""
    if isinstance(message, SystemMessage):
        return SYSTEM
    if isinstance(message, HumanMessage):
        return USER
    if isinstance(message, AIMessage):
        return ASSISTANT
    if isinstance(message, (ToolMessage, FunctionMessage)):
        return TOOL
    if isinstance(message, ChatMessage):
        role = _CHAT_ROLES.get(str(message.role).lower())
        if role is None:
            raise UnsupportedMessageError(
                f"{where}: ChatMessage role {message.role!r} is not supported; "
                f"expected one of {sorted(_CHAT_ROLES)}"
            )
        return role
    raise UnsupportedMessageError(
        f"{where}: unsupported message type {type(message).__name__}; expected SystemMessage, "
        "HumanMessage, AIMessage, ToolMessage or ChatMessage"
    )


def adaptation_context(messages: Sequence[BaseMessage], last: int) -> str:
    """The text the adapter embeds and selects memory for: the last `last` non-system messages.

    Contents (AI tool calls as `name({...})` lines, tool results as their text) joined by newlines,
    without role markers or template tokens, so it lives in the same space as the memory's step texts.
    """
    picked = [m for m in messages if not isinstance(m, SystemMessage) and message_role(m) != SYSTEM]
    parts = []
    for message in picked[-last:] if last > 0 else []:
        text = content_text(message.content, where=type(message).__name__)
        if isinstance(message, AIMessage) and message.tool_calls:
            text = "\n".join(t for t in (text, render_tool_calls(message.tool_calls)) if t)
        if text.strip():
            parts.append(text.strip())
    return "\n".join(parts)


def trailing_inputs(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """The messages after the last AI message (the new input of this call), system messages left out."""
    tail: list[BaseMessage] = []
    for message in reversed(messages):
        if isinstance(message, AIMessage) or (isinstance(message, ChatMessage) and message_role(message) == ASSISTANT):
            break
        tail.append(message)
    tail.reverse()
    return [m for m in tail if message_role(m) != SYSTEM]
