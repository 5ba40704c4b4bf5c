"""Chat conversations → prompt token ids that fit the model's context window.

A conversation is a list of `{"role": ..., "content": ...}` dicts with the role names Hugging Face
chat templates expect. Rendering uses the tokenizer's chat template (falling back to plainer
variants for templates that refuse some roles) or, without one, `Role: text` lines.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from hullft_agent.errors import ContextOverflowError, InvalidArgumentError
from hullft_agent.runtime.locks import base_module

logger = logging.getLogger(__name__)

#: Roles a rendered conversation uses (the names Hugging Face chat templates expect).
SYSTEM, USER, ASSISTANT, TOOL = "system", "user", "assistant", "tool"

Conversation = list[dict[str, str]]
Overflow = Literal["truncate_oldest", "error"]


def check_conversation(conversation: Any, *, what: str = "conversation") -> Conversation:
    """A non-empty list of {'role', 'content'} string dicts, or an error naming the bad message (`what[i]`)."""
    if not isinstance(conversation, Sequence) or isinstance(conversation, str) or not conversation:
        raise InvalidArgumentError(f"a {what} must be a non-empty list of {{'role': ..., 'content': ...}} messages")
    out = []
    for i, message in enumerate(conversation):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise InvalidArgumentError(f"{what}[{i}] must be a dict with string 'role' and 'content', got {message!r:.80}")
        out.append({"role": message["role"], "content": message["content"]})
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


def render_prompt(tokenizer: Any, conversation: Conversation) -> str:
    """The prompt text the model answers after: chat template with the generation prompt, or plain lines."""
    if not getattr(tokenizer, "chat_template", None):
        return plain_prompt(conversation)
    errors = []
    for variant in fallback_conversations(conversation):
        try:
            return tokenizer.apply_chat_template(variant, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # templates raise their own error types
            errors.append(exc)
    raise InvalidArgumentError(f"the tokenizer's chat template refused the conversation: {errors[-1]}") from errors[-1]


def prompt_ids(tokenizer: Any, conversation: Conversation) -> list[int]:
    """Token ids of a rendered conversation, ready for the assistant's turn."""
    text = render_prompt(tokenizer, conversation)
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
               overflow: Overflow = "truncate_oldest", model_name: str = "the model") -> tuple[list[int], int]:
    """Prompt ids that fit the context, and how many of the oldest messages were dropped.

    The prompt may use the context minus min(max_new, context/2). Over that, the oldest non-system
    messages are dropped one at a time (never the last message) with `overflow='truncate_oldest'`;
    `ContextOverflowError` with 'error', or when the system prompt plus the last message alone do not fit.
    """
    ids = prompt_ids(tokenizer, conversation)
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
        ids = prompt_ids(tokenizer, conv)
    logger.info("dropped the %d oldest message(s) to fit the context of %d tokens", dropped, limit)
    return ids, dropped
