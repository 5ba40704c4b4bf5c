"""Chat conversations → prompt token ids that fit the model's context window.

A conversation is a list of `{"role": ..., "content": ...}` dicts with the role names Hugging Face
chat templates expect; an assistant message may also carry `tool_calls` and a tool message its
`tool_call_id` and `name`. Rendering uses the tokenizer's chat template (falling back to plainer
variants for templates that refuse some roles) or, without one, `Role: text` lines. Tools are
passed to templates that use them; other templates get them as text (`tools_system_prompt`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from hullft_agent.errors import ContextOverflowError, InvalidArgumentError
from hullft_agent.runtime.locks import base_module
from hullft_agent.runtime.tools import check_tools, new_call_id, render_tool_call

logger = logging.getLogger(__name__)

#: Roles a rendered conversation uses (the names Hugging Face chat templates expect).
SYSTEM, USER, ASSISTANT, TOOL = "system", "user", "assistant", "tool"

Conversation = list[dict[str, Any]]
Overflow = Literal["truncate_oldest", "error"]


def check_conversation(conversation: Any, *, what: str = "conversation") -> Conversation:
    """A non-empty list of {'role', 'content'} string dicts, or an error naming the bad message (`what[i]`).

    An assistant message may carry `tool_calls` (each `{"id", "name", "arguments": dict}`; OpenAI's
    `{"id", "type", "function": {"name", "arguments": "<json>"}}` is accepted) and then may have a None
    content; a tool message may carry `tool_call_id` and `name` strings. Other keys are dropped.
    """
    if not isinstance(conversation, Sequence) or isinstance(conversation, str) or not conversation:
        raise InvalidArgumentError(f"a {what} must be a non-empty list of {{'role': ..., 'content': ...}} messages")
    out = []
    for i, message in enumerate(conversation):
        where = f"{what}[{i}]"
        calls = message.get("tool_calls") if isinstance(message, Mapping) else None
        content = message.get("content") if isinstance(message, Mapping) else None
        if content is None and calls:
            content = ""
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) \
                or not isinstance(content, str):
            raise InvalidArgumentError(f"{where} must be a dict with string 'role' and 'content', got {message!r:.80}")
        checked: dict[str, Any] = {"role": message["role"], "content": content}
        if calls:
            if message["role"] != ASSISTANT:
                raise InvalidArgumentError(f"{where} has tool_calls but role {message['role']!r}; only "
                                           "assistant messages make tool calls")
            checked["tool_calls"] = _check_message_calls(calls, where)
        for key in ("tool_call_id", "name"):
            value = message.get(key)
            if value is not None and message["role"] == TOOL:
                if not isinstance(value, str) or not value:
                    raise InvalidArgumentError(f"{where}[{key!r}] must be a non-empty string, got {value!r:.80}")
                checked[key] = value
        out.append(checked)
    return out


def _check_message_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's tool calls as `{"id", "name", "arguments": dict}` (a missing id is made up)."""
    if not isinstance(calls, Sequence) or isinstance(calls, str):
        raise InvalidArgumentError(f"{where}['tool_calls'] must be a list of calls, got {type(calls).__name__}")
    out = []
    for j, call in enumerate(calls):
        at = f"{where}['tool_calls'][{j}]"
        function = call.get("function") if isinstance(call, Mapping) else None
        body = function if isinstance(function, Mapping) else call
        name = body.get("name") if isinstance(body, Mapping) else None
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"{at} must be a dict with a 'name' and 'arguments', got {call!r:.80}")
        args = body.get("arguments", body.get("args", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as exc:
                raise InvalidArgumentError(f"{at} ({name!r}) has arguments that are not JSON: {exc}") from exc
        if args is None:
            args = {}
        if not isinstance(args, Mapping):
            raise InvalidArgumentError(f"{at} ({name!r}) arguments must be a dict, got {type(args).__name__}")
        call_id = call.get("id")
        out.append({"id": call_id if isinstance(call_id, str) and call_id else new_call_id(), "name": name,
                    "arguments": dict(args)})
    return out


def fallback_conversations(conversation: Conversation) -> list[Conversation]:
    """Progressively plainer variants for chat templates that refuse some roles.

    1. as given; 2. tool turns rendered as user turns; 3. additionally the system prompt folded into
    the first user turn and consecutive same-role turns merged (strict user/assistant alternation).
    """
    variants = [conversation]
    no_tool = [{"role": USER if m["role"] == TOOL else m["role"], "content": m["content"]} for m in conversation]
    if no_tool != conversation:
        variants.append(no_tool)
    system = "\n\n".join(m["content"] for m in no_tool if m["role"] == SYSTEM)
    rest = [m for m in no_tool if m["role"] != SYSTEM]
    merged: Conversation = []
    for m in rest:
        if merged and merged[-1]["role"] == m["role"]:
            merged[-1] = {"role": m["role"], "content": merged[-1]["content"] + "\n\n" + m["content"]}
        else:
            merged.append(dict(m))
    if system:
        if merged and merged[0]["role"] == USER:
            merged[0] = {"role": USER, "content": system + "\n\n" + merged[0]["content"]}
        else:
            merged.insert(0, {"role": USER, "content": system})
    if merged and merged not in variants:
        variants.append(merged)
    return variants


def plain_prompt(conversation: Conversation) -> str:
    """A prompt for tokenizers without a chat template: `Role: text` lines, ending in `Assistant:`."""
    names = {SYSTEM: "System", USER: "User", ASSISTANT: "Assistant", TOOL: "Tool"}
    lines = [f"{names.get(m['role'], m['role'].title())}: {m['content']}" for m in conversation]
    return "\n".join(lines) + "\nAssistant:"


#: The system-prompt section that lists the tools for templates that do not render tools themselves.
TOOLS_PROMPT = (
    "# Tools\n\nYou can call these functions. Their JSON schemas:\n<tools>\n{tools}\n</tools>\n\n"
    "To call one, write a JSON object with its name and arguments inside <tool_call></tool_call> tags, "
    "one block per call:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <arguments-object>}}\n"
    "</tool_call>\nTool results come back inside <tool_response></tool_response> tags."
)


def tools_system_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    """The fallback's tool section: one JSON line per tool, then how to call one (`TOOLS_PROMPT`)."""
    lines = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return TOOLS_PROMPT.format(tools=lines)


def uses_tool_calling(conversation: Conversation, tools: Sequence[Any] | None = None) -> bool:
    """Whether a call involves tool calling: tools are given, or the history holds tool calls or results."""
    return bool(tools) or any("tool_calls" in m or "tool_call_id" in m for m in conversation)


def template_handles_tools(tokenizer: Any, tools: Sequence[Any] | None, conversation: Conversation) -> bool:
    """Whether the chat template renders the tools (its source uses the `tools` variable) and, when the
    history has tool calls, the messages' `tool_calls` too."""
    try:
        source = tokenizer.get_chat_template(tools=list(tools) if tools else None)
    except Exception:  # no template, or one the tokenizer cannot pick
        return False
    if not isinstance(source, str):
        return False
    if tools:
        try:
            import jinja2
            from jinja2 import meta

            if "tools" not in meta.find_undeclared_variables(jinja2.Environment().parse(source)):
                return False
        except Exception:  # a template jinja2 alone cannot parse (custom extensions): read the text
            if "tools" not in source:
                return False
    return not any("tool_calls" in m for m in conversation) or "tool_calls" in source


def template_messages(conversation: Conversation) -> list[dict[str, Any]]:
    """Messages in the form tool-aware chat templates expect (`tool_calls` as OpenAI/HF function calls)."""
    out = []
    for m in conversation:
        message = dict(m)
        if "tool_calls" in m:
            message["tool_calls"] = [{"id": c["id"], "type": "function",
                                      "function": {"name": c["name"], "arguments": c["arguments"]}}
                                     for c in m["tool_calls"]]
        out.append(message)
    return out


def textual_conversation(conversation: Conversation, tools: Sequence[Mapping[str, Any]] | None = None) -> Conversation:
    """Tool calling written into plain `{"role", "content"}` messages, for templates without tool support.

    The tools go into the (first) system message as `tools_system_prompt`; an assistant's tool calls
    are appended to its content as `<tool_call>` blocks, the form the model is asked to answer in; tool
    results are wrapped in `<tool_response>` tags. A conversation without tool calling is unchanged.
    """
    if not uses_tool_calling(conversation, tools):
        return [{"role": m["role"], "content": m["content"]} for m in conversation]
    out: Conversation = []
    for m in conversation:
        text = m["content"]
        if m.get("tool_calls"):
            blocks = "\n".join(render_tool_call(c["name"], c["arguments"]) for c in m["tool_calls"])
            text = f"{text}\n{blocks}" if text.strip() else blocks
        elif m["role"] == TOOL:
            text = f"<tool_response>\n{text}\n</tool_response>"
        out.append({"role": m["role"], "content": text})
    if tools:
        section = tools_system_prompt(tools)
        first = next((i for i, m in enumerate(out) if m["role"] == SYSTEM), None)
        if first is None:
            out.insert(0, {"role": SYSTEM, "content": section})
        else:
            base = out[first]["content"]
            out[first] = {"role": SYSTEM, "content": f"{base}\n\n{section}" if base.strip() else section}
    return out


def render_prompt(tokenizer: Any, conversation: Conversation, tools: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The prompt text the model answers after: chat template with the generation prompt, or plain lines.

    With `tools` (OpenAI-style definitions, `check_tools`) or tool calls in the history, a template that
    renders tools gets them as `apply_chat_template(..., tools=...)` and the structured messages; any
    other template (or one that refuses them) gets `textual_conversation`: the tools listed in the
    system prompt, calls and results as text.
    """
    tools = check_tools(tools) if tools else []
    if not getattr(tokenizer, "chat_template", None):
        return plain_prompt(textual_conversation(conversation, tools))
    if uses_tool_calling(conversation, tools) and template_handles_tools(tokenizer, tools, conversation):
        try:
            return tokenizer.apply_chat_template(template_messages(conversation), tools=tools or None,
                                                 tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # fall back to the tools as text
            logger.info("the chat template refused the tools or tool calls (%s); rendering them as text", exc)
    errors = []
    for variant in fallback_conversations(textual_conversation(conversation, tools)):
        try:
            return tokenizer.apply_chat_template(variant, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # templates raise their own error types
            errors.append(exc)
    raise InvalidArgumentError(f"the tokenizer's chat template refused the conversation: {errors[-1]}") from errors[-1]


def prompt_ids(tokenizer: Any, conversation: Conversation, tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
    """Token ids of a rendered conversation (with its tools), ready for the assistant's turn."""
    text = render_prompt(tokenizer, conversation, tools)
    templated = bool(getattr(tokenizer, "chat_template", None))
    ids = tokenizer(text, add_special_tokens=not templated)["input_ids"]
    if not ids:
        raise InvalidArgumentError("the rendered prompt is empty")
    return list(ids)


def context_limit(model: Any, tokenizer: Any, override: int | None = None) -> int | None:
    """Most tokens (prompt + answer) the model attends to; None when unknown."""
    if override is not None:
        return override
    config = getattr(base_module(model), "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 1:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 1 < value < 10**7 else None


def fit_prompt(tokenizer: Any, conversation: Conversation, *, limit: int | None, max_new: int,
               overflow: Overflow = "truncate_oldest", model_name: str = "the model",
               tools: Sequence[Mapping[str, Any]] | None = None) -> tuple[list[int], int]:
    """Prompt ids that fit the context, and how many of the oldest messages were dropped.

    The prompt may use the context minus min(max_new, context/2). Over that, the oldest non-system
    messages are dropped one at a time (never the last message) with `overflow='truncate_oldest'`;
    `ContextOverflowError` with 'error', or when the system prompt plus the last message alone do not fit.
    The `tools` are rendered with every attempt (they are never dropped).
    """
    ids = prompt_ids(tokenizer, conversation, tools)
    if limit is None:
        return ids, 0
    budget = limit - min(max_new, limit // 2)
    if len(ids) <= budget:
        return ids, 0
    what = (f"{model_name} has a context of {limit} tokens, {limit - budget} of them reserved for the "
            f"answer (max_tokens={max_new})")
    if overflow == "error":
        raise ContextOverflowError(
            f"the prompt is {len(ids)} tokens but {what}; shorten the conversation, lower max_tokens, or "
            "use context_overflow='truncate_oldest'"
        )
    conv = list(conversation)
    dropped = 0
    while len(ids) > budget:
        idx = next((i for i, m in enumerate(conv[:-1]) if m["role"] != SYSTEM), None)
        if idx is None:
            raise ContextOverflowError(
                f"the prompt is {len(ids)} tokens even with only the system prompt and the last message "
                f"({dropped} older message(s) dropped) but {what}; shorten the last message or the system prompt"
            )
        del conv[idx]
        dropped += 1
        ids = prompt_ids(tokenizer, conv, tools)
    logger.info("dropped the %d oldest message(s) to fit the context of %d tokens", dropped, limit)
    return ids, dropped
