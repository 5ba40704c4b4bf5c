"""`ChatHullFT`: a LangChain chat model over a local causal LM that adapts before every call.

One call: render the messages with the tokenizer's chat template → adapt (a `TestTimeAdapter`
selects memory rows for the recent conversation and runs a few LoRA steps) → sample the answer
token by token → restore the base model (per_query mode) → log the exchange to the trajectory
memory. Calls on the same model are serialised by a lock, so concurrent calls never see each
other's adaptation.
"""

from __future__ import annotations

import logging
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import ConfigurableField, Runnable, RunnableConfig, ensure_config
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hullft_agent.config import (
    PACKAGED_LLM,
    AdaptMode,
    AdaptOverrides,
    DecisionFormat,
    LearnFrom,
    SelectionMethod,
    decision_format,
)
from hullft_agent.errors import InvalidArgumentError, InvalidTypeError
from hullft_agent.runtime import (
    DEFAULT_MEMORY_KINDS,
    DEFAULT_SCORING,
    Call,
    CallResult,
    ChoiceResult,
    Runtime,
)
from hullft_agent.runtime.choice import Scoring, Strategy
from hullft_agent.runtime.engine import model_name_from_source
from hullft_agent.runtime.generation import SamplingParams
from langchain_hullft._messages import adaptation_context, to_conversation, trailing_inputs
from langchain_hullft._runtime import keys_from_config, memory_steps
from langchain_hullft._tools import (
    core_tool_choice,
    langchain_invalid_tool_calls,
    langchain_tool_calls,
    openai_tools,
    tool_call_chunks,
)

logger = logging.getLogger(__name__)

#: Adaptation settings that can be overridden per instance, per call (kwargs) or per chain
#: (`configurable_adaptation()`); None keeps the adapter's own configuration.
ADAPTATION_FIELDS = ("method", "n_select", "k", "refresh_interval", "lr", "mode", "max_instances", "learn_from")
#: ChatHullFT's name of each adaptation setting → its `AdaptOverrides` name.
_OVERRIDE_NAMES = {"method": "method", "n_select": "n", "k": "k", "refresh_interval": "refresh_interval", "lr": "lr",
                   "mode": "mode", "max_instances": "max_instances", "learn_from": "learn_from"}
#: Keyword arguments hosted chat models take that mean nothing for a local model; accepted and ignored.
_IGNORED_INIT_KWARGS = ("api_key", "base_url", "max_retries", "organization")


class CallOptions(BaseModel):
    """Per-call keyword arguments of `invoke`/`stream`/... (validated; unknown names are refused)."""

    model_config = ConfigDict(extra="forbid")

    task: str | None = None
    episode_id: str | None = None
    namespace: str | None = None
    adapt: bool = True
    log: bool = True
    seed: int | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    method: SelectionMethod | None = None
    n_select: int | None = Field(None, ge=1)
    k: int | None = Field(None, ge=1)
    refresh_interval: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    mode: AdaptMode | None = None
    max_instances: int | None = Field(None, ge=1)
    learn_from: LearnFrom | None = None
    log_metadata: dict[str, Any] | None = None
    actor: str | None = None
    reward: float | None = None


class ChatHullFT(BaseChatModel):
    """A chat model over a local causal LM that learns from its trajectory memory before each call.

    >>> chat = ChatHullFT.from_pretrained(memory=memory, n_select=8)          # packaged SmolLM2
    >>> chat = ChatHullFT(llm=load_model(), adapter=adapter, memory=memory)   # or wire it yourself
    >>> msg = chat.invoke("How do I reset the lamp?", config={"configurable": {"thread_id": "t1"}})
    >>> msg.response_metadata["adaptation"]["selected_ids"]

    - `llm`: a `LoadedModel` or a causal LM module (then pass `tokenizer`). With an `adapter`, the
      adapter's (peft-wrapped) model and tokenizer are used and `llm` may be left out.
    - `adapter`: an optional `TestTimeAdapter`; without it the model answers unadapted.
    - `memory`: an optional `TrajectoryMemory`; each exchange (the new input messages and the answer)
      is logged to it.
    - Per-call keyword arguments (see `CallOptions`): task, episode_id, namespace, adapt, log, seed,
      max_tokens, temperature, top_p, repetition_penalty, the adaptation settings, and log_metadata
      (merged into the metadata of the steps this call logs).
    - `choose(messages, choices)` answers with one of the given choices, ranked by log-likelihood
      (or generated and matched), through the same adapt → score → restore → log path.
    - The runnable config supplies namespace / task / episode_id through `configurable` or `metadata`
      keys `hullft_namespace`|`namespace`, `hullft_task`|`task`, `hullft_episode_id`|`episode_id`|
      `thread_id`. Defaults: the memory's namespace, no task, and a fresh episode id per call.
    """

    model_config = ConfigDict(
        arbitrary_types_allowed=True, extra="forbid", populate_by_name=True
    )

    llm: Any = Field(default=None, exclude=True, repr=False, description="causal LM module or LoadedModel")
    tokenizer: Any = Field(default=None, exclude=True, repr=False)
    adapter: Any = Field(default=None, exclude=True, repr=False, description="TestTimeAdapter or None")
    memory: Any = Field(default=None, exclude=True, repr=False, description="TrajectoryMemory or None")
    source: Any = Field(default=None, exclude=True, repr=False,
                        description="candidate source of the adaptation (default: the adapter's own)")
    model_name: str = Field(default="", alias="model", description="name reported in metadata and traces")

    # generation
    max_tokens: int = Field(256, ge=1, description="most new tokens per answer")
    temperature: float = Field(0.7, ge=0, description="0 = greedy decoding")
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    stop: list[str] | None = Field(None, description="stop sequences; the answer is cut before the first one")
    seed: int | None = Field(None, description="sampling seed; None draws a fresh one per call (reported)")
    timeout: float | None = Field(None, gt=0, description="wall-clock cap on generation, seconds")
    streaming: bool = Field(False, description="invoke() streams internally (callbacks per token)")

    # context window
    max_context_tokens: int | None = Field(None, ge=2, description="default: the model's position limit")
    context_overflow: Literal["truncate_oldest", "error"] = Field(
        "truncate_oldest",
        description="too long a prompt: drop the oldest non-system messages, or raise ContextOverflowError",
    )
    adapt_last_messages: int = Field(4, ge=1, description="adaptation context = the last N non-system messages")
    prompt_format: DecisionFormat | None = Field(
        None, description="answer the messages trimmed to this decision format (or its name, e.g. 'nosys-h1'); "
        "decision rows keep the trimmed prompt, so the model acts on what they train (None: all messages)",
    )

    # adaptation overrides (None = the adapter's configuration)
    method: SelectionMethod | None = None
    n_select: int | None = Field(None, ge=1, description="N: size of the finetuning multiset")
    k: int | None = Field(None, ge=1, description="K: candidate pool size")
    refresh_interval: int | None = Field(None, ge=1, description="r: fresh gradient every r repeats")
    lr: float | None = Field(None, gt=0)
    mode: AdaptMode | None = None
    max_instances: int | None = Field(None, ge=1, description="train at most this many instances per call, heaviest first")
    learn_from: LearnFrom | None = Field(None, description="train only on these memory rows (e.g. decisions of won "
                                         "episodes: LearnFrom(kinds=['decision'], outcomes=['won']))")
    on_adapt_error: Literal["fallback", "raise"] = Field(
        "fallback", description="an exception inside adaptation: answer unadapted and report it, or raise"
    )

    # memory logging
    namespace: str | None = None
    task: str | None = None
    log_exchanges: bool = True
    log_decisions: bool = Field(
        False, description="also log each exchange as a decision row (prompt -> answer) for decision-aware adaptation"
    )
    memory_kinds: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_MEMORY_KINDS))

    # ------------------------------------------------------------------ construction
    @model_validator(mode="before")
    @classmethod
    def _unpack(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in _IGNORED_INIT_KWARGS:
            if key in data:
                data.pop(key)
                logger.debug("ChatHullFT ignores %r (a local model has no API key or retries)", key)
        data["prompt_format"] = decision_format(data.get("prompt_format"))
        llm = data.get("llm")
        if llm is not None and hasattr(llm, "model") and hasattr(llm, "tokenizer") and hasattr(llm, "source"):
            data["llm"] = llm.model
            if data.get("tokenizer") is None:
                data["tokenizer"] = llm.tokenizer
            if not data.get("model_name") and not data.get("model"):
                data["model_name"] = model_name_from_source(llm.source)
        return data

    @model_validator(mode="after")
    def _check(self) -> ChatHullFT:
        if self.llm is None and self.adapter is None:
            raise InvalidArgumentError("ChatHullFT needs llm= (a LoadedModel or a causal LM module) or adapter=")
        runtime = self.runtime()  # validates the model, adapter, tokenizer and memory together
        if self.stop is not None and not all(isinstance(s, str) for s in self.stop):
            raise InvalidTypeError(f"stop must be a list of strings, got {self.stop!r}")
        if not self.model_name:
            self.model_name = runtime.name
        return self

    def runtime(self) -> Runtime:
        """The core runtime this model's calls go through (built from the current fields; cheap)."""
        return Runtime(
            self.llm, self.tokenizer, adapter=self.adapter, source=self.source,
            memory=self.memory if self.log_exchanges else None,
            name=self.model_name or None, max_context_tokens=self.max_context_tokens,
            context_overflow=self.context_overflow, on_adapt_error=self.on_adapt_error,
            memory_kinds=self.memory_kinds, log_source="langchain_hullft", log_decisions=self.log_decisions,
            prompt_format=self.prompt_format,
        )

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path = PACKAGED_LLM,
        *,
        memory: Any = None,
        embedder: Any = None,
        adapter_config: Any = None,
        adapt: bool = True,
        device: str = "auto",
        **kwargs: Any,
    ) -> ChatHullFT:
        """Load a local model (default: the packaged SmolLM2-135M-Instruct) and wire it up.

        With a `memory` (and `adapt`), a `TestTimeAdapter` is built over it, using `embedder` or the
        memory's own embedder; `adapter_config` is an `AdapterConfig`. Other keyword arguments are
        ChatHullFT fields (max_tokens, n_select, ...).
        """
        from hullft_agent.adapter import TestTimeAdapter
        from hullft_agent.config import AdapterConfig, ModelConfig
        from hullft_agent.models import load_model

        loaded = load_model(ModelConfig(name_or_path=str(model), device=device))
        adapter = None
        if memory is not None and adapt:
            embedder = embedder if embedder is not None else getattr(memory, "embedder", None)
            if embedder is None:
                raise InvalidArgumentError("adapting needs an embedder: pass embedder= or open the memory with one")
            adapter = TestTimeAdapter(loaded, embedder=embedder, source=memory, config=adapter_config or AdapterConfig())
        kwargs.setdefault("model_name", model_name_from_source(loaded.source))
        if adapter is not None:
            return cls(adapter=adapter, memory=memory, **kwargs)
        return cls(llm=loaded, memory=memory, **kwargs)

    # ------------------------------------------------------------------ LangChain plumbing
    @property
    def _llm_type(self) -> str:
        return "hullft-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model_name": self.model_name,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
            "stop": self.stop,
            "adapter": self.adapter is not None,
        }
        for name in ADAPTATION_FIELDS:
            value = getattr(self, name)
            if value is not None:
                params[name] = value.model_dump(exclude_none=True) if isinstance(value, BaseModel) else value
        return params

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="hullft",
            ls_model_name=kwargs.get("model") if isinstance(kwargs.get("model"), str) else self.model_name,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        stops = stop or self.stop
        if stops:
            params["ls_stop"] = list(stops)
        return params

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, strict: bool | None = None,
                   **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        """This model with `tools` offered on every call (LangChain tools, functions, pydantic models or
        OpenAI dicts, converted by `convert_to_openai_tool`).

        `tool_choice`: None/'auto' (the model decides), 'none', 'any'/'required' (the answer is a call),
        a tool's name or True (with one tool: that tool). Tools are rendered by the chat template when it
        supports them, else listed in the system prompt; calls are parsed from the answer into
        `AIMessage.tool_calls` (malformed ones into `invalid_tool_calls`). See docs/langchain.md.
        """
        formatted = openai_tools(tools, strict=strict)
        if tool_choice is not None:
            kwargs["tool_choice"] = core_tool_choice(tool_choice, formatted)
        return self.bind(tools=formatted, **kwargs)

    def configurable_adaptation(self, prefix: str = "") -> Runnable[LanguageModelInput, BaseMessage]:
        """This model with the adaptation settings exposed as configurable fields.

        `chain.invoke(x, config={"configurable": {"n_select": 4, "mode": "per_task"}})`; ids are the
        field names (method, n_select, k, refresh_interval, lr, mode, max_instances, learn_from), optionally
        prefixed.
        """
        descriptions = {
            "method": "selection method: hullft, knn, sift or none",
            "n_select": "N, size of the finetuning multiset",
            "k": "K, candidate pool size",
            "refresh_interval": "r, fresh gradient every r repeats",
            "lr": "LoRA learning rate",
            "mode": "per_query (reset after each call) or per_task (keep one adapter per task)",
            "max_instances": "train at most this many instances per call, heaviest first",
            "learn_from": "which memory rows to train on (kinds, actors, outcomes, min_reward, where)",
        }
        return self.configurable_fields(
            **{name: ConfigurableField(id=prefix + name, name=name, description=descriptions[name])
               for name in ADAPTATION_FIELDS}
        )

    @property
    def lock(self) -> threading.RLock:
        """The lock every call on this model (and any other wrapper of the same weights) holds."""
        return self.runtime().lock

    # The public entry points forward the runnable config's namespace/task/episode keys as call
    # options (BaseChatModel does not hand the config itself down to _generate/_stream).
    def invoke(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
               stop: list[str] | None = None, **kwargs: Any) -> AIMessage:
        return super().invoke(input, config, stop=stop, **_with_config_keys(config, kwargs))

    async def ainvoke(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
                      stop: list[str] | None = None, **kwargs: Any) -> AIMessage:
        return await super().ainvoke(input, config, stop=stop, **_with_config_keys(config, kwargs))

    def stream(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
               stop: list[str] | None = None, **kwargs: Any) -> Iterator[AIMessageChunk]:
        return super().stream(input, config, stop=stop, **_with_config_keys(config, kwargs))

    def astream(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
                stop: list[str] | None = None, **kwargs: Any) -> AsyncIterator[AIMessageChunk]:
        return super().astream(input, config, stop=stop, **_with_config_keys(config, kwargs))

    # ------------------------------------------------------------------ planning (no model state)
    def _plan(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
              metadata: dict[str, Any] | None) -> Call:
        model_override = kwargs.pop("model", None)
        if model_override is not None and model_override != self.model_name:
            raise InvalidArgumentError(
                f"ChatHullFT serves one local model ({self.model_name!r}); model={model_override!r} cannot be "
                "switched per call. Create another ChatHullFT for another model."
            )
        tools = openai_tools(kwargs.pop("tools", None))
        tool_choice = core_tool_choice(kwargs.pop("tool_choice", None), tools)
        for name in [k for k in kwargs if k.startswith("ls_")]:
            kwargs.pop(name)
        try:
            options = CallOptions(**kwargs)
        except Exception as exc:
            raise InvalidTypeError(f"invalid call options for ChatHullFT: {exc}") from exc
        keys = keys_from_config({"metadata": metadata}) if metadata else {}
        stops = list(stop) if stop is not None else list(self.stop or [])
        if not all(isinstance(s, str) for s in stops):
            raise InvalidTypeError(f"stop must be a list of strings, got {stops!r}")
        seed = options.seed if options.seed is not None else self.seed
        sampling = SamplingParams(
            max_new_tokens=options.max_tokens or self.max_tokens,
            temperature=self.temperature if options.temperature is None else options.temperature,
            top_p=options.top_p or self.top_p,
            repetition_penalty=options.repetition_penalty or self.repetition_penalty,
            seed=seed if seed is not None else secrets.randbits(63),
            stop=stops,
            time_limit=self.timeout,
        )
        overrides = {}
        for name in ADAPTATION_FIELDS:
            value = getattr(options, name)
            value = getattr(self, name) if value is None else value
            if value is not None:
                overrides[_OVERRIDE_NAMES[name]] = value
        return Call(
            conversation=to_conversation(messages),
            context=adaptation_context(messages, self.adapt_last_messages),
            sampling=sampling,
            task=options.task or keys.get("task") or self.task,
            episode_id=options.episode_id or keys.get("episode_id") or f"chat-{uuid.uuid4().hex[:16]}",
            namespace=options.namespace or keys.get("namespace") or self.namespace,
            adapt=options.adapt,
            overrides=AdaptOverrides(**overrides) if overrides else None,
            log=options.log,
            log_inputs=memory_steps(trailing_inputs(messages), None, self.memory_kinds),
            log_metadata=dict(options.log_metadata or {}),
            actor=options.actor or "agent",
            reward=options.reward,
            tools=tools or None,
            tool_choice=tool_choice,
        )

    # ------------------------------------------------------------------ prompt
    def context_limit(self) -> int | None:
        """Most tokens (prompt + answer) the model attends to; None when unknown."""
        return self.runtime().context_limit()

    def fit_prompt(self, conversation: list[dict[str, str]], max_new: int) -> tuple[list[int], int]:
        """Prompt ids that fit the context (after trimming to `prompt_format`), and how many of the oldest
        messages were dropped.

        The prompt may use the context minus min(max_tokens, context/2). Over that, the oldest
        non-system messages are dropped one at a time (never the last message) when
        `context_overflow='truncate_oldest'`; `ContextOverflowError` when it is 'error' or when the
        system prompt plus the last message alone do not fit.
        """
        runtime = self.runtime()
        return runtime.fit_prompt(runtime.answered_prompt(conversation), max_new)

    # ------------------------------------------------------------------ choosing among given answers
    def choose(
        self,
        input: LanguageModelInput,
        choices: Sequence[str],
        config: RunnableConfig | None = None,
        *,
        strategy: Strategy = "loglik",
        scoring: Scoring = DEFAULT_SCORING,
        choice_temperature: float = 0.0,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> ChoiceResult:
        """Answer with one of `choices` (e.g. a game's admissible commands), adapted like a normal call.

        The same path as `invoke`: the same keys (task / episode_id / namespace from kwargs or the
        config), the same lock, adapt → score → restore (per_query) → log, the same report in
        `result.message.response_metadata`. Each choice's tokens, then the end-of-turn token, are
        scored given the rendered prompt, all choices in about one forward pass (`hullft_agent.runtime.scoring`), and
        ranked by `scoring` ('sum' of log-probabilities, or their per-token 'mean'). The best-ranked
        choice is taken, or with `choice_temperature` T > 0 one is drawn with probability
        ∝ exp(score / T), seeded by the call's `seed` (T = 1 with 'sum' samples from the model's own
        distribution over the choices).

        `strategy='generate'` lets the model write its answer (the call's sampling settings; stop at
        a newline unless `stop` is given) and matches it to the closest choice; an answer that
        names none is reported (`result.no_match`, a warning) and the best-scored choice is used.
        What is logged to memory is the chosen text, as the AI's answer. Keyword arguments are the
        per-call options of `invoke` (`CallOptions`).
        """
        messages = self._convert_input(input).to_messages()
        stops = stop if stop is not None else (["\n"] if strategy == "generate" else None)
        call = self._plan(messages, stops, _with_config_keys(config, kwargs), None)
        result = self.runtime().choose(call, choices, strategy=strategy, scoring=scoring,
                                       temperature=choice_temperature)
        metadata = self._metadata(call, result.call)
        metadata["choice"] = result.summary()
        result.message = AIMessage(content=result.text, usage_metadata=result.call.usage(), response_metadata=metadata)
        return result

    # ------------------------------------------------------------------ results
    def _metadata(self, plan: Call, outcome: CallResult) -> dict[str, Any]:
        hullft: dict[str, Any] = {
            "namespace": plan.namespace if plan.namespace is not None else getattr(self.memory, "namespace", None),
            "task": plan.task,
            "episode_id": plan.episode_id,
            "seed": plan.sampling.seed,
            "prompt_tokens": outcome.prompt_tokens,
            "dropped_messages": outcome.dropped,
            "logged_ids": outcome.logged_ids,
            "timings": outcome.timings,
        }
        if outcome.log_error:
            hullft["log_error"] = outcome.log_error
        if outcome.invalid_tool_calls:
            hullft["invalid_tool_calls"] = [
                {"id": c.id, "name": c.name, "arguments": c.arguments, "error": c.error}
                for c in outcome.invalid_tool_calls
            ]
        return {
            "model_name": self.model_name,
            "finish_reason": outcome.stats.finish_reason,
            "adaptation": outcome.report.model_dump(mode="json"),
            "hullft": hullft,
        }

    def _result(self, plan: Call, outcome: CallResult) -> ChatResult:
        message = AIMessage(
            content=outcome.text,
            tool_calls=langchain_tool_calls(outcome.tool_calls),
            invalid_tool_calls=langchain_invalid_tool_calls(outcome.invalid_tool_calls),
            usage_metadata=outcome.usage(),
            response_metadata=self._metadata(plan, outcome),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _last_chunk(self, plan: Call, outcome: CallResult) -> ChatGenerationChunk:
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                tool_call_chunks=tool_call_chunks(outcome.tool_calls),
                chunk_position="last",
                usage_metadata=outcome.usage(),
                response_metadata=self._metadata(plan, outcome),
            )
        )

    def _chunk(self, plan: Call, item: str | CallResult) -> ChatGenerationChunk:
        """A streamed item of the runtime as a chunk: a text piece, or the last chunk with usage and report."""
        if isinstance(item, CallResult):
            return self._last_chunk(plan, item)
        return ChatGenerationChunk(message=AIMessageChunk(content=item))

    # ------------------------------------------------------------------ BaseChatModel hooks
    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        plan = self._plan(messages, stop, kwargs, getattr(run_manager, "metadata", None))
        return self._result(plan, self.runtime().generate(plan))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        plan = self._plan(messages, stop, kwargs, getattr(run_manager, "metadata", None))
        for item in self.runtime().stream(plan):
            yield self._chunk(plan, item)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        plan = self._plan(messages, stop, kwargs, getattr(run_manager, "metadata", None))
        return self._result(plan, await self.runtime().agenerate(plan))

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        plan = self._plan(messages, stop, kwargs, getattr(run_manager, "metadata", None))
        async for item in self.runtime().astream(plan):
            yield self._chunk(plan, item)


def _with_config_keys(config: RunnableConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """kwargs plus namespace/task/episode_id found in the (ambient or given) runnable config."""
    keys = keys_from_config(ensure_config(config))
    return {**keys, **kwargs} if keys else kwargs
