"""`HullFTMiddleware`: test-time adaptation and trajectory logging for `langchain.agents.create_agent`.

Around every model call of the agent loop it tells the agent's `ChatHullFT` which task, episode and
namespace the call belongs to (the model adapts on the recent conversation, under its lock, and
answers), then logs the step: the new user input, the model's answer and each tool call. Around every
tool call it logs the tool's result. One agent run (or one thread, with a checkpointer) is one episode,
so the adapter never trains on the run it is answering.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse
from langchain.agents.middleware.types import ExtendedModelResponse, PrivateStateAttr
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.runnables import ensure_config
from langgraph.types import Command
from typing_extensions import NotRequired

from hullft_agent.config import AdaptMode
from hullft_agent.decisions import decision_step
from hullft_agent.errors import InvalidArgumentError, InvalidTypeError
from hullft_agent.runtime import DEFAULT_MEMORY_KINDS, lock_for
from langchain_hullft._messages import (
    ASSISTANT,
    adaptation_context,
    content_text,
    message_role,
    to_conversation,
)
from langchain_hullft._runtime import keys_from_config, memory_steps
from langchain_hullft.chat_models import ChatHullFT

logger = logging.getLogger(__name__)


class HullFTState(AgentState[Any]):
    """Agent state plus the episode id this middleware logs under (private to the middleware)."""

    hullft_episode_id: NotRequired[Annotated[str, PrivateStateAttr]]


def find_chat_hullft(model: Any) -> ChatHullFT | None:
    """The ChatHullFT behind `model` (itself, or the model a RunnableBinding wraps), else None."""
    seen = 0
    while model is not None and seen < 8:
        if isinstance(model, ChatHullFT):
            return model
        model = getattr(model, "bound", None) or getattr(model, "default", None)
        seen += 1
    return None


class HullFTMiddleware(AgentMiddleware[HullFTState, Any, Any]):
    """Adapt the agent's ChatHullFT before each model call and log every step to trajectory memory.

    - `mode`: 'per_query' (base model restored after each call) or 'per_task' (one adapter per task,
      kept across the calls and runs of that task); None keeps the model's / adapter's setting.
    - `task`: the task key. Default: `hullft_task`/`task` from the runnable config, else this value,
      else (per_task only) the thread id, so each conversation thread trains its own adapter.
    - `namespace`: memory namespace (default: config `hullft_namespace`/`namespace`, else the memory's).
    - `memory`: where steps are logged (default: the model's `memory`); `log_steps=False` logs nothing.
    - `adapt=False` answers with the base model (logging only).
    - `log_decisions=True` also logs each model answer as a decision row (the prompt it was given, the
      answer, actor `agent`); `memory.finish_episode(episode_id, outcome="won")` when the run ends lets
      `LearnFrom(outcomes=["won"])` train later runs on the decisions that worked.

    The episode id is the config's `hullft_episode_id`/`episode_id`/`thread_id`, else one fresh id per
    agent run (kept in the agent state, so every model and tool call of the run shares it).

    The agent's model must be a `ChatHullFT`. A middleware cannot see the model when it is
    constructed (create_agent receives them separately), so this is checked at the first model call,
    which raises `TypeError` naming the model's type.
    """

    state_schema = HullFTState

    def __init__(
        self,
        *,
        mode: AdaptMode | None = None,
        task: str | None = None,
        namespace: str | None = None,
        memory: Any = None,
        log_steps: bool = True,
        adapt: bool = True,
        memory_kinds: dict[str, str] | None = None,
        log_decisions: bool = False,
    ) -> None:
        super().__init__()
        if mode not in (None, "per_query", "per_task"):
            raise InvalidArgumentError(f"mode must be 'per_query', 'per_task' or None, got {mode!r}")
        for name, value in (("task", task), ("namespace", namespace)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InvalidArgumentError(f"{name} must be a non-empty string or None, got {value!r}")
        if memory is not None and not hasattr(memory, "add"):
            raise InvalidTypeError(f"memory must be a TrajectoryMemory, got {type(memory).__name__}")
        self.mode: AdaptMode | None = mode
        self.task = task
        self.namespace = namespace
        self.memory = memory
        self.log_steps = log_steps
        self.adapt = adapt
        self.memory_kinds = dict(memory_kinds or DEFAULT_MEMORY_KINDS)
        self.log_decisions = log_decisions
        self.tools = []
        #: the agent's model, seen at the last model call (tool calls log to its memory)
        self._chat_model: ChatHullFT | None = None

    # ------------------------------------------------------------------ keys
    def before_agent(self, state: HullFTState, runtime: Any) -> dict[str, Any] | None:
        keys = keys_from_config(ensure_config())
        episode = keys.get("episode_id")
        if episode is not None:
            return None if state.get("hullft_episode_id") == episode else {"hullft_episode_id": episode}
        if state.get("hullft_episode_id"):
            return None
        return {"hullft_episode_id": f"run-{uuid.uuid4().hex[:16]}"}

    async def abefore_agent(self, state: HullFTState, runtime: Any) -> dict[str, Any] | None:
        return self.before_agent(state, runtime)

    def _keys(self, state: Any, chat: ChatHullFT | None) -> dict[str, Any]:
        config = ensure_config()
        keys = keys_from_config(config)
        stored = state.get("hullft_episode_id") if isinstance(state, dict) else None
        episode = keys.get("episode_id") or stored or f"run-{uuid.uuid4().hex[:16]}"
        mode = self.mode or getattr(chat, "mode", None) or getattr(
            getattr(getattr(chat, "adapter", None), "config", None), "mode", "per_query"
        )
        task = keys.get("task") or self.task
        if task is None and mode == "per_task":
            task = (config.get("configurable") or {}).get("thread_id") or episode
        namespace = keys.get("namespace") or self.namespace
        return {"episode_id": episode, "task": task, "namespace": namespace, "mode": mode}

    def _chat(self, request: ModelRequest) -> ChatHullFT:
        chat = find_chat_hullft(request.model)
        if chat is None:
            raise InvalidTypeError(
                "HullFTMiddleware needs the agent's model to be a langchain_hullft.ChatHullFT (it adapts that "
                f"model before each call), got {type(request.model).__name__}. Pass create_agent(model=ChatHullFT(...))."
            )
        self._chat_model = chat
        return chat

    def _request(self, request: ModelRequest, keys: dict[str, Any]) -> ModelRequest:
        settings = {**request.model_settings, "episode_id": keys["episode_id"], "log": False, "adapt": self.adapt}
        for name in ("task", "namespace", "mode"):
            if keys[name] is not None:
                settings[name] = keys[name]
        return request.override(model_settings=settings)

    # ------------------------------------------------------------------ model calls
    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse | AIMessage | ExtendedModelResponse:
        chat = self._chat(request)
        keys = self._keys(request.state, chat)
        response = handler(self._request(request, keys))
        self._log_model_step(chat, request.messages, response, keys)
        return response

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse | AIMessage | ExtendedModelResponse:
        chat = self._chat(request)
        keys = self._keys(request.state, chat)
        response = await handler(self._request(request, keys))
        await asyncio.to_thread(self._log_model_step, chat, request.messages, response, keys)
        return response

    # ------------------------------------------------------------------ tool calls
    def wrap_tool_call(self, request: Any, handler: Callable[[Any], ToolMessage | Command]) -> ToolMessage | Command:
        result = handler(request)
        self._log_tool_result(request, result)
        return result

    async def awrap_tool_call(
        self, request: Any, handler: Callable[[Any], Awaitable[ToolMessage | Command]]
    ) -> ToolMessage | Command:
        result = await handler(request)
        await asyncio.to_thread(self._log_tool_result, request, result)
        return result

    # ------------------------------------------------------------------ logging
    def _memory_for(self, chat: ChatHullFT | None) -> Any:
        if not self.log_steps:
            return None
        return self.memory if self.memory is not None else getattr(chat, "memory", None)

    def _write(self, memory: Any, steps: list[dict[str, Any]], keys: dict[str, Any]) -> list[str]:
        if memory is None or not steps:
            return []
        try:
            with lock_for(memory):
                return list(memory.add(steps, namespace=keys["namespace"], episode_id=keys["episode_id"],
                                       task=keys["task"]))
        except Exception as exc:  # the agent keeps going; the step is missing from memory
            logger.warning("HullFTMiddleware could not log %d step(s): %s", len(steps), exc, exc_info=True)
            return []

    def _log_model_step(self, chat: ChatHullFT, messages: list[BaseMessage], response: Any,
                        keys: dict[str, Any]) -> None:
        memory = self._memory_for(chat)
        if memory is None:
            return
        # new user input since the last AI message (tool results are logged by wrap_tool_call)
        new_inputs: list[BaseMessage] = []
        for message in reversed(messages):
            if isinstance(message, AIMessage) or message_role(message) == ASSISTANT:
                break
            if isinstance(message, HumanMessage):
                new_inputs.append(message)
        new_inputs.reverse()
        outputs = [m for m in _response_messages(response) if isinstance(m, AIMessage)]
        steps = memory_steps(new_inputs, None, self.memory_kinds)
        for output in outputs:
            report = (output.response_metadata or {}).get("adaptation") or {}
            extra = {"model": chat.model_name, "selected_ids": list(report.get("selected_ids", []))}
            steps += memory_steps([], output, self.memory_kinds, output_metadata=extra)
            answer = content_text(output.content, where="model output")
            state = adaptation_context(messages, chat.adapt_last_messages)
            if self.log_decisions and answer.strip() and state.strip():
                prompt = chat.runtime().answered_prompt(to_conversation(messages))  # as the model answered it
                steps.append(decision_step(state, prompt, answer, actor="agent",
                                           metadata={"model": chat.model_name}))
        self._write(memory, steps, keys)

    def _log_tool_result(self, request: Any, result: Any) -> None:
        chat = self._chat_model
        memory = self._memory_for(chat)
        if memory is None:
            return
        keys = self._keys(getattr(request, "state", None), chat)
        self._write(memory, memory_steps(_tool_messages(result), None, self.memory_kinds), keys)


def _response_messages(response: Any) -> list[BaseMessage]:
    if isinstance(response, ExtendedModelResponse):
        response = response.model_response
    if isinstance(response, ModelResponse):
        return list(response.result)
    if isinstance(response, BaseMessage):
        return [response]
    return []


def _tool_messages(result: Any) -> list[BaseMessage]:
    if isinstance(result, ToolMessage):
        return [result]
    if isinstance(result, Command) and isinstance(result.update, dict):
        return [m for m in result.update.get("messages", []) if isinstance(m, ToolMessage)]
    return []
