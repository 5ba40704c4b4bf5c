"""`ChatHullFT`: a LangChain chat model over a local causal LM that adapts before every call.

One call: render the messages with the tokenizer's chat template → adapt (a `TestTimeAdapter`
selects memory rows for the recent conversation and runs a few LoRA steps) → sample the answer
token by token → restore the base model (per_query mode) → log the exchange to the trajectory
memory. Calls on the same model are serialised by a lock, so concurrent calls never see each
other's adaptation.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import queue
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import ConfigurableField, Runnable, RunnableConfig, ensure_config
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hullft_agent.adapter import AdaptationReport
from hullft_agent.config import PACKAGED_LLM, AdaptMode, SelectionMethod
from hullft_agent.errors import ContextOverflowError
from langchain_hullft._choice import (
    DEFAULT_SCORING,
    ChoiceResult,
    Scoring,
    Strategy,
    check_choices,
    match_answer,
    rank_scores,
)
from langchain_hullft._generation import GenerationStats, SamplingParams, sample_tokens
from langchain_hullft._messages import (
    SYSTEM,
    adaptation_context,
    fallback_conversations,
    plain_prompt,
    to_conversation,
    trailing_inputs,
)
from langchain_hullft._runtime import (
    DEFAULT_MEMORY_KINDS,
    keys_from_config,
    lock_for,
    memory_steps,
    skipped_report,
)
from langchain_hullft._scoring import score_continuations

logger = logging.getLogger(__name__)

#: Adaptation settings that can be overridden per instance, per call (kwargs) or per chain
#: (`configurable_adaptation()`); None keeps the adapter's own configuration.
ADAPTATION_FIELDS = ("method", "n_select", "k", "refresh_interval", "lr", "mode")
#: Keyword arguments hosted chat models take that mean nothing for a local model; accepted and ignored.
_IGNORED_INIT_KWARGS = ("api_key", "base_url", "max_retries", "organization")
_BACKGROUND: set[asyncio.Future[Any]] = set()


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
    log_metadata: dict[str, Any] | None = None


@dataclass
class _Plan:
    """Everything one call needs, resolved in the caller's thread before the model is touched."""

    conversation: list[dict[str, str]]
    context: str
    inputs: list[BaseMessage]
    options: CallOptions
    sampling: SamplingParams
    episode_id: str
    task: str | None
    namespace: str | None


@dataclass
class _Outcome:
    text: str
    report: AdaptationReport
    stats: GenerationStats
    prompt_tokens: int
    dropped: int
    timings: dict[str, float] = field(default_factory=dict)
    logged_ids: list[str] = field(default_factory=list)
    log_error: str | None = None
    log_extra: dict[str, Any] = field(default_factory=dict)


class _NamespacedSource:
    """Scopes a TrajectoryMemory's candidates to one namespace for the duration of a call."""

    def __init__(self, memory: Any, namespace: str) -> None:
        self._memory = memory
        self._namespace = namespace

    def candidates(self, vector: Any, k: int, *, task: str | None = None, exclude_episode: str | None = None) -> Any:
        return self._memory.candidates(vector, k, task=task, exclude_episode=exclude_episode, namespace=self._namespace)


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

    # adaptation overrides (None = the adapter's configuration)
    method: SelectionMethod | None = None
    n_select: int | None = Field(None, ge=1, description="N: size of the finetuning multiset")
    k: int | None = Field(None, ge=1, description="K: candidate pool size")
    refresh_interval: int | None = Field(None, ge=1, description="r: fresh gradient every r repeats")
    lr: float | None = Field(None, gt=0)
    mode: AdaptMode | None = None
    on_adapt_error: Literal["fallback", "raise"] = Field(
        "fallback", description="an exception inside adaptation: answer unadapted and report it, or raise"
    )

    # memory logging
    namespace: str | None = None
    task: str | None = None
    log_exchanges: bool = True
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
        llm = data.get("llm")
        if llm is not None and hasattr(llm, "model") and hasattr(llm, "tokenizer") and hasattr(llm, "source"):
            data["llm"] = llm.model
            if data.get("tokenizer") is None:
                data["tokenizer"] = llm.tokenizer
            if not data.get("model_name") and not data.get("model"):
                data["model_name"] = _name_from_source(llm.source)
        return data

    @model_validator(mode="after")
    def _check(self) -> ChatHullFT:
        if self.adapter is not None:
            for attr in ("adapt", "model", "tokenizer", "session", "config"):
                if not hasattr(self.adapter, attr):
                    raise TypeError(f"adapter must be a TestTimeAdapter, got {type(self.adapter).__name__}")
            if self.llm is not None and _base_of(self.adapter.model) is not _base_of(self.llm):
                raise ValueError(
                    "llm and adapter wrap different models; pass the adapter alone (its model is used)"
                )
        elif self.llm is None:
            raise ValueError("ChatHullFT needs llm= (a LoadedModel or a causal LM module) or adapter=")
        if self.llm is not None and not callable(self.llm):
            raise TypeError(f"llm must be a causal LM module or a LoadedModel, got {type(self.llm).__name__}")
        if self._tok() is None:
            raise ValueError("ChatHullFT needs the model's tokenizer: pass tokenizer= (or a LoadedModel)")
        if self.memory is not None and not (hasattr(self.memory, "add") and hasattr(self.memory, "candidates")):
            raise TypeError(f"memory must be a TrajectoryMemory, got {type(self.memory).__name__}")
        if self.stop is not None and not all(isinstance(s, str) for s in self.stop):
            raise TypeError(f"stop must be a list of strings, got {self.stop!r}")
        if not self.model_name:
            self.model_name = _name_of(self._lm())
        return self

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
                raise ValueError("adapting needs an embedder: pass embedder= or open the memory with one")
            adapter = TestTimeAdapter(loaded, embedder=embedder, source=memory, config=adapter_config or AdapterConfig())
        kwargs.setdefault("model_name", _name_from_source(loaded.source))
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
        params.update({name: getattr(self, name) for name in ADAPTATION_FIELDS if getattr(self, name) is not None})
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

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any) -> Runnable[Any, Any]:
        raise NotImplementedError(
            f"ChatHullFT ({self.model_name}) does not support tool calling: the local model has no "
            "tool-calling format. Use it without tools (e.g. create_agent(model, tools=[])), or parse a "
            "text protocol from its answers yourself."
        )

    def configurable_adaptation(self, prefix: str = "") -> Runnable[LanguageModelInput, BaseMessage]:
        """This model with the adaptation settings exposed as configurable fields.

        `chain.invoke(x, config={"configurable": {"n_select": 4, "mode": "per_task"}})`; ids are the
        field names (method, n_select, k, refresh_interval, lr, mode), optionally prefixed.
        """
        descriptions = {
            "method": "selection method: hullft, knn, sift or none",
            "n_select": "N, size of the finetuning multiset",
            "k": "K, candidate pool size",
            "refresh_interval": "r, fresh gradient every r repeats",
            "lr": "LoRA learning rate",
            "mode": "per_query (reset after each call) or per_task (keep one adapter per task)",
        }
        return self.configurable_fields(
            **{name: ConfigurableField(id=prefix + name, name=name, description=descriptions[name])
               for name in ADAPTATION_FIELDS}
        )

    @property
    def lock(self) -> threading.RLock:
        """The lock every call on this model (and any other wrapper of the same weights) holds."""
        return lock_for(self._lm())

    def _lm(self) -> Any:
        return self.adapter.model if self.adapter is not None else self.llm

    def _tok(self) -> Any:
        if self.tokenizer is not None:
            return self.tokenizer
        return getattr(self.adapter, "tokenizer", None)

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
              metadata: dict[str, Any] | None) -> _Plan:
        model_override = kwargs.pop("model", None)
        if model_override is not None and model_override != self.model_name:
            raise ValueError(
                f"ChatHullFT serves one local model ({self.model_name!r}); model={model_override!r} cannot be "
                "switched per call. Create another ChatHullFT for another model."
            )
        if kwargs.get("tools"):
            self.bind_tools(kwargs["tools"])
        for name in [k for k in kwargs if k.startswith("ls_") or k in ("tools", "tool_choice")]:
            kwargs.pop(name)
        try:
            options = CallOptions(**kwargs)
        except Exception as exc:
            raise TypeError(f"invalid call options for ChatHullFT: {exc}") from exc
        conversation = to_conversation(messages)
        context = adaptation_context(messages, self.adapt_last_messages)
        inputs = trailing_inputs(messages)
        keys = keys_from_config({"metadata": metadata}) if metadata else {}
        stops = list(stop) if stop is not None else list(self.stop or [])
        if not all(isinstance(s, str) for s in stops):
            raise TypeError(f"stop must be a list of strings, got {stops!r}")
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
        episode = options.episode_id or keys.get("episode_id") or f"chat-{uuid.uuid4().hex[:16]}"
        return _Plan(
            conversation=conversation,
            context=context,
            inputs=inputs,
            options=options,
            sampling=sampling,
            episode_id=episode,
            task=options.task or keys.get("task") or self.task,
            namespace=options.namespace or keys.get("namespace") or self.namespace,
        )

    # ------------------------------------------------------------------ prompt
    def context_limit(self) -> int | None:
        """Most tokens (prompt + answer) the model attends to; None when unknown."""
        if self.max_context_tokens is not None:
            return self.max_context_tokens
        config = getattr(_base_of(self._lm()), "config", None)
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 1:
                return value
        value = getattr(self._tok(), "model_max_length", None)
        return value if isinstance(value, int) and 1 < value < 10**7 else None

    def prompt_ids(self, conversation: list[dict[str, str]]) -> list[int]:
        """Token ids of a rendered conversation, ready for the assistant's turn."""
        tok = self._tok()
        if getattr(tok, "chat_template", None):
            errors = []
            for variant in fallback_conversations(conversation):
                try:
                    text = tok.apply_chat_template(variant, tokenize=False, add_generation_prompt=True)
                    break
                except Exception as exc:  # templates raise their own error types
                    errors.append(exc)
            else:
                raise ValueError(f"the tokenizer's chat template refused the conversation: {errors[-1]}") from errors[-1]
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tok(plain_prompt(conversation))["input_ids"]
        if not ids:
            raise ValueError("the rendered prompt is empty")
        return list(ids)

    def fit_prompt(self, conversation: list[dict[str, str]], max_new: int) -> tuple[list[int], int]:
        """Prompt ids that fit the context, and how many of the oldest messages were dropped.

        The prompt may use the context minus min(max_tokens, context/2). Over that, the oldest
        non-system messages are dropped one at a time (never the last message) when
        `context_overflow='truncate_oldest'`; `ContextOverflowError` when it is 'error' or when the
        system prompt plus the last message alone do not fit.
        """
        ids = self.prompt_ids(conversation)
        limit = self.context_limit()
        if limit is None:
            return ids, 0
        budget = limit - min(max_new, limit // 2)
        if len(ids) <= budget:
            return ids, 0
        what = (f"{self.model_name} has a context of {limit} tokens, {limit - budget} of them reserved for the "
                f"answer (max_tokens={max_new})")
        if self.context_overflow == "error":
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
            ids = self.prompt_ids(conv)
        logger.info("dropped the %d oldest message(s) to fit the context of %d tokens", dropped, limit)
        return ids, dropped

    # ------------------------------------------------------------------ one call
    def _execute(self, plan: _Plan, emit: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> _Outcome:
        """Adapt, generate and restore under the model lock; then log to memory."""

        def generate(model: Any, ids: list[int], outcome: _Outcome) -> None:
            for piece in sample_tokens(model, self._tok(), ids, plan.sampling, max_total=self.context_limit(),
                                       stats=outcome.stats, should_stop=should_stop):
                if emit is not None:
                    emit(piece)
            outcome.text = outcome.stats.text
            outcome.timings["generate"] = outcome.stats.seconds

        return self._run_call(plan, plan.sampling.max_new_tokens, generate)

    def _run_call(self, plan: _Plan, reserve: int, act: Callable[[Any, list[int], _Outcome], None]) -> _Outcome:
        """The path of every call: fit the prompt → adapt → `act` (generate or score) → restore → log.

        Everything up to the restore runs under the model lock; `reserve` is the number of tokens
        kept free for the answer when the prompt is fitted to the context.
        """
        with self.lock:
            t0 = time.perf_counter()
            ids, dropped = self.fit_prompt(plan.conversation, reserve)
            timings = {"prompt": time.perf_counter() - t0}
            with self._adapter_settings(plan) as mode:
                report, use_base = self._adapt(plan, mode)
                timings["adapt"] = report.timings.get("total", 0.0)
                outcome = _Outcome(text="", report=report, stats=GenerationStats(), prompt_tokens=len(ids),
                                   dropped=dropped, timings=timings)
                try:
                    with self._generation_model(use_base) as model:
                        act(model, ids, outcome)
                finally:
                    if self.adapter is not None and mode == "per_query":
                        self.adapter.reset()  # the next call (any thread) starts from the base model
        self._log(plan, outcome)
        return outcome

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
        scored given the rendered prompt, all choices in about one forward pass (`_scoring`), and
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
        options = check_choices(choices)
        if strategy not in ("loglik", "generate"):
            raise ValueError(f"strategy must be 'loglik' or 'generate', got {strategy!r}")
        rank_scores([[0.0]], scoring)  # validates the rule before the model runs
        if not (isinstance(choice_temperature, (int, float)) and math.isfinite(choice_temperature)
                and choice_temperature >= 0):
            raise ValueError(f"choice_temperature must be a finite number >= 0, got {choice_temperature!r}")
        messages = self._convert_input(input).to_messages()
        stops = stop if stop is not None else (["\n"] if strategy == "generate" else None)
        plan = self._plan(messages, stops, _with_config_keys(config, kwargs), None)
        tok = self._tok()
        end = [int(tok.eos_token_id)] if getattr(tok, "eos_token_id", None) is not None else []
        encoded = []
        for i, choice in enumerate(options):
            ids = list(tok(choice, add_special_tokens=False)["input_ids"])
            if not ids:
                raise ValueError(f"choices[{i}] {choice!r} encodes to no tokens")
            encoded.append(ids + end)
        reserve = max(len(c) for c in encoded)
        if strategy == "generate":
            reserve = max(reserve, plan.sampling.max_new_tokens)
        picked: dict[str, Any] = {}

        def score(model: Any, ids: list[int], outcome: _Outcome) -> None:
            t0 = time.perf_counter()
            token_logprobs = score_continuations(model, ids, encoded)
            outcome.timings["score"] = time.perf_counter() - t0
            ranked = rank_scores(token_logprobs, scoring)
            best = max(range(len(options)), key=ranked.__getitem__)
            index, generated, no_match = best, None, None
            if strategy == "loglik" and choice_temperature > 0:
                weights = torch.softmax(torch.tensor(ranked, dtype=torch.float64) / choice_temperature, dim=0)
                draw = torch.Generator().manual_seed(plan.sampling.seed)
                index = int(torch.multinomial(weights, 1, generator=draw).item())
            if strategy == "generate":
                for _ in sample_tokens(model, tok, ids, plan.sampling, max_total=self.context_limit(),
                                       stats=outcome.stats):
                    pass
                outcome.timings["generate"] = outcome.stats.seconds
                generated = outcome.stats.text
                matched = match_answer(generated, options)
                if matched is None:
                    no_match = (f"the answer {generated.strip()!r:.80} names none of the {len(options)} choices; "
                                f"took the best-scored one, {options[best]!r}")
                    logger.warning("choose: %s", no_match)
                else:
                    index = matched
            outcome.text = options[index]
            outcome.stats.output_tokens = len(encoded[index])
            outcome.stats.finish_reason = "stop"
            picked.update(index=index, scores=ranked, token_logprobs=token_logprobs, generated=generated,
                          no_match=no_match)
            outcome.log_extra = {"chosen_by": strategy if no_match is None else "fallback",
                                 "choice_index": index, "n_choices": len(options)}

        outcome = self._run_call(plan, reserve, score)
        result = ChoiceResult(
            text=outcome.text, index=picked["index"], choices=options, scores=picked["scores"],
            token_logprobs=picked["token_logprobs"], end_token=bool(end), scoring=scoring, strategy=strategy,
            temperature=float(choice_temperature),
            generated=picked["generated"], matched=None if strategy == "loglik" else picked["no_match"] is None,
            no_match=picked["no_match"], report=outcome.report,
        )
        metadata = self._metadata(plan, outcome)
        metadata["choice"] = result.summary()
        result.message = AIMessage(content=outcome.text, usage_metadata=self._usage(outcome),
                                   response_metadata=metadata)
        return result

    @contextlib.contextmanager
    def _adapter_settings(self, plan: _Plan) -> Iterator[str]:
        """Apply this call's adaptation overrides to the adapter, and undo them afterwards."""
        adapter = self.adapter
        if adapter is None:
            yield self.mode or "per_query"
            return
        original_config, original_source = adapter.config, adapter.source
        config = original_config.model_copy(deep=True)
        for name in ADAPTATION_FIELDS:
            value = getattr(plan.options, name)
            value = getattr(self, name) if value is None else value
            if value is None:
                continue
            if name == "method":
                config.selection.method = value
            elif name == "n_select":
                config.selection.n = value
            elif name == "k":
                config.selection.k = value
            elif name == "refresh_interval":
                config.finetune.refresh_interval = value
            elif name == "lr":
                config.finetune.lr = value
            else:
                config.mode = value
        adapter.config = config
        if plan.namespace is not None and original_source is self.memory and self.memory is not None:
            adapter.source = _NamespacedSource(self.memory, plan.namespace)
        try:
            yield config.mode
        finally:
            adapter.config, adapter.source = original_config, original_source

    def _adapt(self, plan: _Plan, mode: str) -> tuple[AdaptationReport, bool]:
        """Run the adaptation; return its report and whether to answer with the base model."""
        adapter = self.adapter
        if adapter is None:
            return skipped_report("no adapter: this ChatHullFT was created without a TestTimeAdapter"), True
        sel = adapter.config.selection
        common = {"method": sel.method, "mode": mode, "task": plan.task, "n": sel.n, "k": sel.k}
        if not plan.options.adapt:
            return skipped_report("adaptation turned off for this call (adapt=False)", **common), True
        if not plan.context:
            return skipped_report("empty adaptation context: the recent messages have no text", **common), True
        if mode == "per_query":
            adapter.save_tasks()  # keep what per_task calls trained, then start from the base model
            adapter.reset()
        try:
            report = adapter.adapt(plan.context, task=plan.task, episode_id=plan.episode_id)
        except Exception as exc:
            if self.on_adapt_error == "raise":
                raise
            logger.warning("adaptation failed, answering with the unadapted model: %s", exc, exc_info=True)
            report = skipped_report(f"adaptation failed: {type(exc).__name__}: {exc}", **common)
        return report, False

    @contextlib.contextmanager
    def _generation_model(self, use_base: bool) -> Iterator[Any]:
        if self.adapter is not None and use_base:
            with self.adapter.session.disabled() as model:
                yield model
        else:
            yield self._lm()

    def _log(self, plan: _Plan, outcome: _Outcome) -> None:
        if self.memory is None or not self.log_exchanges or not plan.options.log:
            return
        output = AIMessage(content=outcome.text)
        extra = {**(plan.options.log_metadata or {}), "model": self.model_name, "adapted": outcome.report.adapted,
                 "selected_ids": list(outcome.report.selected_ids), **outcome.log_extra}
        steps = memory_steps(plan.inputs, output, self.memory_kinds, output_metadata=extra)
        if not steps:
            return
        t0 = time.perf_counter()
        try:
            with lock_for(self.memory):
                outcome.logged_ids = list(self.memory.add(
                    steps, namespace=plan.namespace, episode_id=plan.episode_id, task=plan.task
                ))
        except Exception as exc:  # the answer stands; say why nothing was logged
            logger.warning("could not log the exchange to memory: %s", exc, exc_info=True)
            outcome.log_error = f"{type(exc).__name__}: {exc}"
        outcome.timings["log"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ results
    def _metadata(self, plan: _Plan, outcome: _Outcome) -> dict[str, Any]:
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
        return {
            "model_name": self.model_name,
            "finish_reason": outcome.stats.finish_reason,
            "adaptation": outcome.report.model_dump(mode="json"),
            "hullft": hullft,
        }

    @staticmethod
    def _usage(outcome: _Outcome) -> dict[str, int]:
        out = outcome.stats.output_tokens
        return {"input_tokens": outcome.prompt_tokens, "output_tokens": out, "total_tokens": outcome.prompt_tokens + out}

    def _result(self, plan: _Plan, outcome: _Outcome) -> ChatResult:
        message = AIMessage(
            content=outcome.text,
            usage_metadata=self._usage(outcome),
            response_metadata=self._metadata(plan, outcome),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _last_chunk(self, plan: _Plan, outcome: _Outcome) -> ChatGenerationChunk:
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                chunk_position="last",
                usage_metadata=self._usage(outcome),
                response_metadata=self._metadata(plan, outcome),
            )
        )

    # ------------------------------------------------------------------ BaseChatModel hooks
    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        plan = self._plan(messages, stop, kwargs, getattr(run_manager, "metadata", None))
        return self._result(plan, self._execute(plan))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        plan = self._plan(messages, stop, kwargs, getattr(run_manager, "metadata", None))
        items: queue.Queue[tuple[str, Any]] = queue.Queue()
        cancel = threading.Event()

        def work() -> None:
            try:
                outcome = self._execute(plan, lambda piece: items.put(("piece", piece)), cancel.is_set)
                items.put(("done", outcome))
            except BaseException as exc:  # handed to the consumer, re-raised there
                items.put(("error", exc))

        # The model runs in a worker thread (which holds the lock); this generator only hands the
        # pieces on, so an abandoned stream stops generation at the next token and frees the model.
        ctx = contextvars.copy_context()
        threading.Thread(target=ctx.run, args=(work,), name="hullft-stream", daemon=True).start()
        try:
            while True:
                kind, payload = items.get()
                if kind == "piece":
                    yield ChatGenerationChunk(message=AIMessageChunk(content=payload))
                elif kind == "done":
                    yield self._last_chunk(plan, payload)
                    return
                else:
                    raise payload
        finally:
            cancel.set()

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        plan = self._plan(messages, stop, kwargs, getattr(run_manager, "metadata", None))
        cancel = threading.Event()
        try:
            outcome = await asyncio.to_thread(self._execute, plan, None, cancel.is_set)
        except asyncio.CancelledError:
            cancel.set()  # the worker stops at the next token and releases the model
            raise
        return self._result(plan, outcome)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        plan = self._plan(messages, stop, kwargs, getattr(run_manager, "metadata", None))
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()

        def put(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening any more
                cancel.set()

        def work() -> None:
            try:
                put(("done", self._execute(plan, lambda piece: put(("piece", piece)), cancel.is_set)))
            except BaseException as exc:
                put(("error", exc))

        task = asyncio.ensure_future(asyncio.to_thread(work))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
        try:
            while True:
                kind, payload = await items.get()
                if kind == "piece":
                    yield ChatGenerationChunk(message=AIMessageChunk(content=payload))
                elif kind == "done":
                    yield self._last_chunk(plan, payload)
                    return
                else:
                    raise payload
        finally:
            cancel.set()


def _with_config_keys(config: RunnableConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """kwargs plus namespace/task/episode_id found in the (ambient or given) runnable config."""
    keys = keys_from_config(ensure_config(config))
    return {**keys, **kwargs} if keys else kwargs


def _base_of(model: Any) -> Any:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) and type(model).__name__.startswith("Peft") else model


def _name_of(model: Any) -> str:
    config = getattr(_base_of(model), "config", None)
    name = getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None)
    if isinstance(name, str) and name.strip():
        return Path(name).name or name
    return type(_base_of(model)).__name__


def _name_from_source(source: str) -> str:
    head = str(source).split(" (", 1)[0].strip()
    return Path(head).name or head or "local-model"
