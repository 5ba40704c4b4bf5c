"""LangChain plumbing: call keys from a runnable config, memory steps of messages, the report of an answer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage

from hullft_agent.adapter import AdaptationReport
from langchain_hullft._messages import (
    ASSISTANT,
    content_text,
    message_role,
    render_tool_calls,
)

#: Keys read from a runnable config's `configurable`, then its `metadata` (first hit wins per field).
CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "namespace": ("hullft_namespace", "namespace"),
    "task": ("hullft_task", "task"),
    "episode_id": ("hullft_episode_id", "episode_id", "thread_id"),
}


def keys_from_config(config: Mapping[str, Any] | None) -> dict[str, str]:
    """namespace / task / episode_id from a runnable config (configurable first, then metadata)."""
    if not config:
        return {}
    sources = [config.get("configurable") or {}, config.get("metadata") or {}]
    found: dict[str, str] = {}
    for field, names in CONFIG_KEYS.items():
        for source in sources:
            value = next((source[n] for n in names if isinstance(source.get(n), str) and source.get(n)), None)
            if value is not None:
                found[field] = value
                break
    return found


def memory_steps(
    inputs: Sequence[BaseMessage],
    output: AIMessage | None,
    kinds: Mapping[str, str],
    *,
    output_metadata: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Memory steps for the new input messages and the model's answer (empty texts are left out)."""
    steps: list[dict[str, Any]] = []
    for message in inputs:
        role = message_role(message)
        kind = kinds.get(role)
        text = content_text(message.content, where=type(message).__name__)
        if kind is None or not text.strip():
            continue
        metadata: dict[str, Any] = {"role": role, "source": "langchain_hullft"}
        for attr in ("name", "tool_call_id", "status"):
            value = getattr(message, attr, None)
            if isinstance(value, str) and value:
                metadata[attr] = value
        steps.append({"kind": kind, "text": text, "metadata": metadata})
    if output is not None:
        text = content_text(output.content, where="model output")
        kind = kinds.get(ASSISTANT)
        if kind is not None and text.strip():
            metadata = {"role": ASSISTANT, "source": "langchain_hullft", **(output_metadata or {})}
            steps.append({"kind": kind, "text": text, "metadata": metadata})
        call_kind = kinds.get("tool_call")
        for call in output.tool_calls if call_kind is not None else ():
            metadata = {"role": ASSISTANT, "source": "langchain_hullft", "name": call.get("name")}
            if call.get("id"):
                metadata["tool_call_id"] = call["id"]
            steps.append({"kind": call_kind, "text": render_tool_calls([call]), "metadata": metadata})
    return steps


def get_adaptation_report(message: Any) -> AdaptationReport | None:
    """The `AdaptationReport` of a ChatHullFT answer (from `response_metadata['adaptation']`), or None."""
    metadata = getattr(message, "response_metadata", None) or {}
    data = metadata.get("adaptation")
    if data is None:
        return None
    if isinstance(data, AdaptationReport):
        return data
    return AdaptationReport.model_validate(data)
