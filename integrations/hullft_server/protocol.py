"""The OpenAI chat-completions wire format: requests in, `Call`s for the runtime, responses and chunks out.

Pure data conversion (no FastAPI, no model), so every rule is testable on its own. Fields OpenAI
clients send that a local model cannot honour with a non-default value (n > 1, logprobs, a JSON
response format, penalties) are refused with a message naming them rather than silently ignored.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hullft_agent.config import AdaptMode, AdaptOverrides, LearnFrom, SelectionMethod
from hullft_agent.errors import InvalidArgumentError
from hullft_agent.runtime import Call, CallResult, SamplingParams
from hullft_agent.runtime.engine import conversation_context

#: OpenAI message roles → the chat-template roles a conversation uses.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
#: Most characters of one request's message text (a guard before tokenizing anything).
MAX_MESSAGE_CHARS = 1_000_000


class HullftOptions(BaseModel):
    """Per-request adaptation settings, sent as `"hullft": {...}` (the OpenAI SDK's `extra_body`)."""

    model_config = ConfigDict(extra="forbid")

    adapt: bool = True
    log: bool = True
    method: SelectionMethod | None = None
    n: int | None = Field(None, ge=1)
    k: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    refresh_interval: int | None = Field(None, ge=1)
    mode: AdaptMode | None = None
    same_task_only: bool | None = None
    max_instances: int | None = Field(None, ge=1)
    learn_from: LearnFrom | None = Field(None, description="train only on these rows (kinds, actors, outcomes, "
                                        "min_reward), e.g. the decisions of won episodes")
    task: str | None = Field(None, min_length=1, max_length=256)
    episode_id: str | None = Field(None, min_length=1, max_length=256)
    actor: str | None = Field(None, description="who acted, on this request's decision row (default 'agent')")
    reward: float | None = Field(None, allow_inf_nan=False, description="this step's reward, on its decision row")

    @field_validator("learn_from")
    @classmethod
    def _no_sql(cls, value: LearnFrom | None) -> LearnFrom | None:
        if value is not None and value.where is not None:
            raise ValueError("learn_from.where is not accepted over HTTP (the memory is shared by every tenant); "
                             "use kinds, actors, outcomes and min_reward")
        return value

    def overrides(self, *, anonymous: bool) -> AdaptOverrides | None:
        """The adapter overrides; a request with no session or task adapts per_query unless it asks otherwise
        (anonymous requests share no adapter)."""
        given = {name: getattr(self, name) for name in ("method", "n", "k", "lr", "refresh_interval", "mode",
                                                         "same_task_only", "max_instances", "learn_from")
                 if getattr(self, name) is not None}
        if anonymous:
            given.setdefault("mode", "per_query")
        return AdaptOverrides(**given) if given else None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The request body of POST /v1/chat/completions (unknown extra fields are ignored, like OpenAI's)."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = Field(None, max_length=256)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    hullft: HullftOptions = Field(default_factory=HullftOptions)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > 16 or not all(s for s in stops):
            raise ValueError("stop must be a non-empty string or a list of at most 16 non-empty strings")
        return stops

    def refuse_unsupported(self) -> None:
        """Fields a local model cannot honour, when set to something other than their default."""
        if self.n != 1:
            raise InvalidArgumentError(f"n={self.n}: this server returns one choice per request (n must be 1)")
        if self.logprobs or self.top_logprobs:
            raise InvalidArgumentError("logprobs are not supported by this server")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise InvalidArgumentError(
                f"response_format {self.response_format.get('type')!r} is not supported (only 'text')"
            )
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                raise InvalidArgumentError(f"{name} is not supported by this server (leave it unset or 0)")
        if self.logit_bias:
            raise InvalidArgumentError("logit_bias is not supported by this server")


def message_text(message: ChatMessage, index: int) -> str:
    """A message's text: a string, or text parts (other part types are refused: the model reads text only)."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        text = content
    else:
        pieces = []
        for j, part in enumerate(content):
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidArgumentError(
                    f"messages[{index}].content[{j}] has type {part.get('type')!r}; this server reads text only"
                )
            pieces.append(part["text"])
        text = "".join(pieces)
    if len(text) > MAX_MESSAGE_CHARS:
        raise InvalidArgumentError(f"messages[{index}] has {len(text)} characters, over {MAX_MESSAGE_CHARS}")
    return text


def tool_call_arguments(call: dict[str, Any], where: str) -> tuple[str, str | None, dict[str, Any]]:
    """(name, id, arguments) of an OpenAI assistant `tool_calls` entry; arguments is a JSON object string."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise InvalidArgumentError(f"{where} must be {{'type': 'function', 'function': {{'name', 'arguments'}}}}")
    raw = function.get("arguments") or "{}"
    try:
        arguments = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"{where}.function.arguments is not valid JSON: {exc}") from None
    if not isinstance(arguments, dict):
        raise InvalidArgumentError(f"{where}.function.arguments must be a JSON object")
    call_id = call.get("id")
    return function["name"], call_id if isinstance(call_id, str) else None, arguments


def to_conversation(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """OpenAI messages → the runtime's conversation (tool calls and tool results kept structured)."""
    conversation: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = ROLES.get(message.role)
        if role is None:
            raise InvalidArgumentError(f"messages[{i}].role {message.role!r} is not one of {sorted(ROLES)}")
        entry: dict[str, Any] = {"role": role, "content": message_text(message, i)}
        if message.tool_calls:
            if role != "assistant":
                raise InvalidArgumentError(f"messages[{i}] has tool_calls but role {message.role!r}")
            calls = []
            for j, call in enumerate(message.tool_calls):
                name, call_id, arguments = tool_call_arguments(call, f"messages[{i}].tool_calls[{j}]")
                calls.append({"id": call_id or f"call_{i}_{j}", "name": name, "arguments": arguments})
            entry["tool_calls"] = calls
        if role == "tool":
            if message.tool_call_id:
                entry["tool_call_id"] = message.tool_call_id
            if message.name:
                entry["name"] = message.name
        conversation.append(entry)
    return conversation


def build_call(request: ChatCompletionRequest, *, namespace: str | None, session: str | None,
               default_max_tokens: int, time_limit: float | None, context_messages: int = 4) -> Call:
    """A runtime `Call` for one request: the session keys its task and episode, `hullft` its adaptation.

    A request without a session (no `X-Session-Id`, `user` or `hullft.task`) adapts per_query: the
    per_task adapter of a session is never shared with anonymous requests.
    """
    request.refuse_unsupported()
    options = request.hullft
    conversation = to_conversation(request.messages)
    task = options.task or session
    episode_id = options.episode_id or session or f"req-{uuid.uuid4().hex[:16]}"
    sampling = SamplingParams(
        max_new_tokens=request.max_completion_tokens or request.max_tokens or default_max_tokens,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        seed=request.seed if request.seed is not None else uuid.uuid4().int >> 65,
        stop=list(request.stop or []),
        time_limit=time_limit,
    )
    extra: dict[str, Any] = {}
    if request.tools:
        extra["tools"] = request.tools
        extra["tool_choice"] = request.tool_choice if request.tool_choice is not None else "auto"
    return Call(
        conversation=conversation,
        context=conversation_context(conversation, context_messages),
        sampling=sampling,
        task=task,
        episode_id=episode_id,
        namespace=namespace,
        adapt=options.adapt,
        overrides=options.overrides(anonymous=task is None),
        log=options.log,
        log_metadata={"session": session} if session else {},
        actor=options.actor or "agent",
        reward=options.reward,
        **extra,
    )


# ---------------------------------------------------------------------- responses
def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def finish_reason(result: CallResult) -> str:
    """OpenAI's finish reasons: the runtime's time limit or cancellation end the answer like its length limit."""
    reason = result.stats.finish_reason
    return reason if reason in ("stop", "length", "tool_calls") else "length"


def usage(result: CallResult) -> dict[str, int]:
    out = result.stats.output_tokens
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": out, "total_tokens": result.prompt_tokens + out}


def report_extra(call: Call, result: CallResult, queue_seconds: float) -> dict[str, Any]:
    """What the server adds to a response (OpenAI clients ignore it): the adaptation and the call's keys."""
    extra: dict[str, Any] = {
        "adaptation": result.report.model_dump(mode="json"),
        "namespace": call.namespace,
        "task": call.task,
        "episode_id": call.episode_id,
        "seed": call.sampling.seed,
        "dropped_messages": result.dropped,
        "logged_ids": result.logged_ids,
        "timings": {"queue": queue_seconds, **result.timings},
    }
    if result.log_error:
        extra["log_error"] = result.log_error
    invalid = getattr(result, "invalid_tool_calls", None)
    if invalid:
        extra["invalid_tool_calls"] = [vars(c) for c in invalid]
    return extra


def tool_calls_json(result: CallResult) -> list[dict[str, Any]]:
    return [c.to_openai() for c in getattr(result, "tool_calls", None) or ()]


def completion_body(call: Call, result: CallResult, *, model: str, queue_seconds: float) -> dict[str, Any]:
    """A `chat.completion` object."""
    message: dict[str, Any] = {"role": "assistant", "content": result.text}
    calls = tool_calls_json(result)
    if calls:
        message["tool_calls"] = calls
        message["content"] = result.text or None
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(result), "logprobs": None}],
        "usage": usage(result),
        "hullft": report_extra(call, result, queue_seconds),
    }


def chunk(stream_id: str, model: str, created: int, delta: dict[str, Any] | None,
          finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
    """A `chat.completion.chunk` object (no choice at all when `delta` is None: the usage chunk)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
    return {"id": stream_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": choices, **extra}


def final_delta(result: CallResult) -> dict[str, Any]:
    """The last content chunk's delta: the tool calls, if the answer made any."""
    calls = tool_calls_json(result)
    return {"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]} if calls else {}


def error_body(message: str, *, kind: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}

