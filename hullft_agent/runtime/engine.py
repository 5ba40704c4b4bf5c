"""`Runtime`: one model's call path, lock → adapt → act → restore → log.

Every way of calling an adapted model (LangChain's `ChatHullFT`, the agent middleware, the
TextWorld agent, a server, a plain Python loop) goes through `Runtime.generate` or
`Runtime.choose`: the prompt is fitted to the context, the adapter trains on memory rows
selected for the call's context, the model generates (or scores given answers), a per_query
adaptation is undone, and the exchange is logged to the trajectory memory. Calls on the same
weights are serialised by one lock, so concurrent calls never see each other's adaptation.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from hullft_agent.adapter import AdaptationReport
from hullft_agent.config import AdaptOverrides, DecisionFormat, decision_format
from hullft_agent.decisions import check_actor, decision_step, trim_prompt
from hullft_agent.errors import InvalidArgumentError, InvalidTypeError
from hullft_agent.runtime.choice import (
    DEFAULT_SCORING,
    ChoiceResult,
    Scoring,
    Strategy,
    check_choices,
    match_answer,
    rank_scores,
)
from hullft_agent.runtime.constrained import forced_reserve, forced_tool_call
from hullft_agent.runtime.generation import GenerationStats, SamplingParams, sample_tokens
from hullft_agent.runtime.locks import base_module, lock_for
from hullft_agent.runtime.prompt import (
    ASSISTANT,
    SYSTEM,
    TOOL,
    USER,
    Conversation,
    Overflow,
    check_conversation,
    context_limit,
    fit_prompt,
)
from hullft_agent.runtime.scoring import score_continuations
from hullft_agent.runtime.tools import (
    InvalidToolCall,
    ToolCall,
    check_tool_choice,
    check_tools,
    forced_tool_name,
    parse_tool_calls,
    tool_call_text,
)

logger = logging.getLogger(__name__)
#: Stream workers still running after their consumer went away (kept referenced until they finish).
_BACKGROUND: set[asyncio.Future[Any]] = set()

#: Memory kind of a logged message, by its role (None leaves that role out of the memory).
DEFAULT_MEMORY_KINDS: dict[str, str] = {USER: "observation", TOOL: "result", ASSISTANT: "action", "tool_call": "tool"}


@dataclass
class Call:
    """One call's inputs, resolved before the model is touched.

    `context` is the text the adapter embeds and selects memory rows for (empty: no adaptation).
    `log_inputs` are the memory steps of the call's new input messages; None derives them from the
    conversation's messages after its last assistant turn. The answer is logged after them, and,
    when the runtime logs decisions, a decision row (state = `context`, the prompt, the answer,
    `actor`) whose reward and outcome the caller can fill in later.
    `tools` are OpenAI-style function definitions the model may call (`tools.check_tools`);
    `tool_choice` is 'auto', 'none' (the tools are not offered), 'required' (the answer is a call)
    or `{"type": "function", "function": {"name": ...}}` (a call of that tool).
    """

    conversation: Conversation
    context: str = ""
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(max_new_tokens=256))
    task: str | None = None
    episode_id: str = field(default_factory=lambda: f"call-{uuid.uuid4().hex[:16]}")
    namespace: str | None = None
    adapt: bool = True
    overrides: AdaptOverrides | None = None
    log: bool = True
    log_inputs: list[dict[str, Any]] | None = None
    log_metadata: dict[str, Any] = field(default_factory=dict)
    actor: str = "agent"
    reward: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] = "auto"

    def __post_init__(self) -> None:
        self.conversation = check_conversation(self.conversation)
        if not isinstance(self.context, str):
            raise InvalidTypeError(f"context must be a string, got {type(self.context).__name__}")
        if isinstance(self.overrides, Mapping):
            self.overrides = AdaptOverrides.model_validate(self.overrides)
        check_actor(self.actor)
        self.tools = check_tools(self.tools) or None
        self.tool_choice = check_tool_choice(self.tool_choice, self.tools)

    @property
    def active_tools(self) -> list[dict[str, Any]] | None:
        """The tools offered to the model: None without tools or with tool_choice='none'."""
        return self.tools if self.tools and self.tool_choice != "none" else None


@dataclass
class CallResult:
    """What one call did: the answer, the adaptation report, token counts, timings, what was logged."""

    text: str
    report: AdaptationReport
    stats: GenerationStats
    prompt_tokens: int
    dropped: int
    timings: dict[str, float] = field(default_factory=dict)
    logged_ids: list[str] = field(default_factory=list)
    log_error: str | None = None
    log_extra: dict[str, Any] = field(default_factory=dict)
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)

    def usage(self) -> dict[str, int]:
        out = self.stats.output_tokens
        return {"input_tokens": self.prompt_tokens, "output_tokens": out, "total_tokens": self.prompt_tokens + out}


class NamespacedSource:
    """A TrajectoryMemory's candidates scoped to one namespace (for one call)."""

    def __init__(self, memory: Any, namespace: str) -> None:
        self._memory = memory
        self._namespace = namespace

    def candidates(self, vector: Any, k: int, *, task: str | None = None, exclude_episode: str | None = None,
                   learn_from: Any = None) -> Any:
        return self._memory.candidates(vector, k, task=task, exclude_episode=exclude_episode, namespace=self._namespace,
                                       learn_from=learn_from)


def skipped_report(reason: str, *, method: str = "none", mode: str = "per_query", task: str | None = None,
                   n: int = 0, k: int = 0) -> AdaptationReport:
    return AdaptationReport(method=method, mode=mode, task=task, n=n, k=k, skipped=True, skip_reason=reason)


def conversation_steps(messages: Sequence[dict[str, Any]], kinds: Mapping[str, str]) -> list[dict[str, Any]]:
    """Memory steps for plain conversation messages (roles without a kind and empty texts left out); a
    tool result keeps its `tool_call_id` and `name`."""
    steps = []
    for message in messages:
        kind = kinds.get(message["role"])
        if kind is not None and message["content"].strip():
            metadata = {"role": message["role"], **{k: message[k] for k in ("tool_call_id", "name") if k in message}}
            steps.append({"kind": kind, "text": message["content"], "metadata": metadata})
    return steps


def trailing_messages(conversation: Conversation) -> Conversation:
    """The messages after the last assistant turn (the call's new input), system messages left out."""
    tail: Conversation = []
    for message in reversed(conversation):
        if message["role"] == ASSISTANT:
            break
        tail.append(message)
    return [m for m in reversed(tail) if m["role"] != SYSTEM]


def conversation_context(conversation: Conversation, last: int = 4) -> str:
    """The text the adapter embeds for a conversation: its last `last` non-system messages.

    Contents (an assistant's tool calls as `name({json})` lines) joined by newlines, without role
    markers or template tokens, so it lives in the same space as the memory's step texts.
    """
    picked = [m for m in conversation if m["role"] != SYSTEM][-last:] if last > 0 else []
    parts = []
    for message in picked:
        calls = [tool_call_text(c.get("name", "?"), c.get("arguments") or {}) for c in message.get("tool_calls") or ()]
        text = "\n".join(t for t in (message["content"].strip(), *calls) if t)
        if text:
            parts.append(text)
    return "\n".join(parts)


class Runtime:
    """The adapt → act → restore → log path of one local causal LM.

    - `model`/`tokenizer`: the LM (a `LoadedModel` works as `model`); with an `adapter` its
      (peft-wrapped) model and tokenizer are used and `model` may be left out.
    - `adapter`: an optional `TestTimeAdapter`; without it the model answers unadapted.
    - `memory`: an optional `TrajectoryMemory` each exchange is logged to (`memory_kinds` maps a
      message role to its memory kind).
    - `source`: where candidates come from (default: the adapter's own source). A call with a
      `namespace` reads only that namespace of it when it is a TrajectoryMemory.
    - `on_adapt_error`: an exception inside adaptation answers with the base model and reports it
      ('fallback'), or is raised ('raise').
    - `log_decisions`: also log each exchange as a decision row (`hullft_agent.decisions`), so later
      adaptations can train on prompt -> answer pairs of the steps that worked.
    - `prompt_format`: the model answers each conversation trimmed to this `DecisionFormat` (or its
      name in `DECISION_FORMATS`, e.g. 'nosys-h1'), and decision rows keep that trimmed prompt: the
      model then acts on the prompts its decision rows train on (None: the conversation as given).

    A runtime holds no state of its own beyond these references (per-task adapters live in the
    adapter), so building one per call is cheap; the lock is shared by everything on the same weights.
    """

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        *,
        adapter: Any = None,
        memory: Any = None,
        source: Any = None,
        name: str | None = None,
        max_context_tokens: int | None = None,
        context_overflow: Overflow = "truncate_oldest",
        on_adapt_error: Literal["fallback", "raise"] = "fallback",
        memory_kinds: Mapping[str, str] | None = None,
        log_source: str = "hullft_agent",
        log_decisions: bool = False,
        prompt_format: DecisionFormat | str | None = None,
    ) -> None:
        if model is not None and hasattr(model, "model") and hasattr(model, "tokenizer") and hasattr(model, "source"):
            tokenizer = tokenizer if tokenizer is not None else model.tokenizer
            name = name or model_name_from_source(model.source)
            model = model.model
        if adapter is not None:
            for attr in ("adapt", "model", "tokenizer", "session", "config", "resolve"):
                if not hasattr(adapter, attr):
                    raise InvalidTypeError(f"adapter must be a TestTimeAdapter, got {type(adapter).__name__}")
            if model is not None and base_module(adapter.model) is not base_module(model):
                raise InvalidArgumentError("model and adapter wrap different models; pass the adapter alone (its model is used)")
            tokenizer = tokenizer if tokenizer is not None else adapter.tokenizer
        elif model is None:
            raise InvalidArgumentError("a Runtime needs model= (a LoadedModel or a causal LM module) or adapter=")
        if model is not None and not callable(model):
            raise InvalidTypeError(f"model must be a causal LM module or a LoadedModel, got {type(model).__name__}")
        if tokenizer is None:
            raise InvalidArgumentError("a Runtime needs the model's tokenizer: pass tokenizer= (or a LoadedModel)")
        if memory is not None and not (hasattr(memory, "add") and hasattr(memory, "candidates")):
            raise InvalidTypeError(f"memory must be a TrajectoryMemory, got {type(memory).__name__}")
        if context_overflow not in ("truncate_oldest", "error"):
            raise InvalidArgumentError(f"context_overflow must be 'truncate_oldest' or 'error', got {context_overflow!r}")
        if on_adapt_error not in ("fallback", "raise"):
            raise InvalidArgumentError(f"on_adapt_error must be 'fallback' or 'raise', got {on_adapt_error!r}")
        self._model = model
        self.tokenizer = tokenizer
        self.adapter = adapter
        self.memory = memory
        self.source = source
        self.max_context_tokens = max_context_tokens
        self.context_overflow: Overflow = context_overflow
        self.on_adapt_error = on_adapt_error
        self.memory_kinds = dict(DEFAULT_MEMORY_KINDS if memory_kinds is None else memory_kinds)
        self.log_source = log_source
        self.log_decisions = log_decisions
        self.prompt_format = decision_format(prompt_format)
        self.name = name or model_name(self.model)

    @property
    def model(self) -> Any:
        """The model that answers (the adapter's peft-wrapped one when there is an adapter)."""
        return self.adapter.model if self.adapter is not None else self._model

    @property
    def lock(self) -> Any:
        """The lock every call on these weights holds (shared with any other wrapper of them)."""
        return lock_for(self.model)

    def context_limit(self) -> int | None:
        """Most tokens (prompt + answer) the model attends to; None when unknown."""
        return context_limit(self.model, self.tokenizer, self.max_context_tokens)

    def answered_prompt(self, conversation: Conversation) -> Conversation:
        """The messages the model answers: `conversation` trimmed to `prompt_format` (None: as given)."""
        if self.prompt_format is None:
            return conversation
        trimmed = trim_prompt(list(conversation), self.prompt_format)
        if not trimmed:
            raise InvalidArgumentError(f"the prompt format {self.prompt_format!r} leaves no message of this "
                                       "conversation (it drops system messages, and there is nothing else)")
        return trimmed

    def fit_prompt(self, conversation: Conversation, max_new: int,
                   tools: Sequence[Mapping[str, Any]] | None = None) -> tuple[list[int], int]:
        """Prompt ids (with the `tools` rendered) that fit the context, and how many of the oldest
        messages were dropped."""
        return fit_prompt(self.tokenizer, conversation, limit=self.context_limit(), max_new=max_new,
                          overflow=self.context_overflow, model_name=self.name, tools=tools)

    # ------------------------------------------------------------------ generate
    def generate(self, call: Call, emit: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> CallResult:
        """Adapt, generate the answer (each decoded piece handed to `emit`), restore, log.

        With tools offered (`call.active_tools`) the answer may be tool-call markup, so nothing is
        emitted while it is generated: it is parsed at the end (`tools.parse_tool_calls`) into
        `result.tool_calls` / `result.invalid_tool_calls`, `result.text` is the content outside the
        calls, emitted once when non-empty, and the finish reason is 'tool_calls' when calls were
        parsed. `tool_choice='required'` or a named tool makes the model write a call in a forced
        frame (`constrained.forced_tool_call`); `result.stats.text` keeps the raw output.
        """
        tools = call.active_tools
        if tools is None:

            def act(model: Any, ids: list[int], result: CallResult) -> None:
                for piece in sample_tokens(model, self.tokenizer, ids, call.sampling,
                                           max_total=self.context_limit(), stats=result.stats,
                                           should_stop=should_stop):
                    if emit is not None:
                        emit(piece)
                result.text = result.stats.text
                result.timings["generate"] = result.stats.seconds

            return self.run(call, call.sampling.max_new_tokens, act)

        forced = call.tool_choice == "required" or forced_tool_name(call.tool_choice) is not None
        name = forced_tool_name(call.tool_choice)

        def act_tools(model: Any, ids: list[int], result: CallResult) -> None:
            if forced:
                raw = forced_tool_call(model, self.tokenizer, ids, tools, name, call.sampling,
                                       max_total=self.context_limit(), stats=result.stats, should_stop=should_stop)
            else:
                for _ in sample_tokens(model, self.tokenizer, ids, call.sampling, max_total=self.context_limit(),
                                       stats=result.stats, should_stop=should_stop):
                    pass
                raw = result.stats.text
            result.timings["generate"] = result.stats.seconds
            template = None if forced else getattr(self.tokenizer, "response_template", None)
            prefix = self.tokenizer.decode(ids, skip_special_tokens=False) if template else ""
            result.text, result.tool_calls, result.invalid_tool_calls = parse_tool_calls(
                raw, tools, response_template=template, prefix=prefix)
            if result.tool_calls:
                result.stats.finish_reason = "tool_calls"
            for bad in result.invalid_tool_calls:
                logger.warning("the model wrote an invalid tool call: %s", bad.error)
            if result.text and emit is not None:
                emit(result.text)

        reserve = call.sampling.max_new_tokens
        if forced:
            reserve += forced_reserve(self.tokenizer, tools, name)
        return self.run(call, reserve, act_tools)

    def stream(self, call: Call) -> Iterator[str | CallResult]:
        """`generate` in a worker thread: yields each text piece, then the `CallResult`.

        The worker holds the model lock; the caller only hands pieces on, so a caller that stops
        iterating (or closes the iterator) stops generation at the next token and frees the model.
        An error inside the call is raised here.
        """
        items: queue.Queue[tuple[str, Any]] = queue.Queue()
        cancel = threading.Event()

        def work() -> None:
            try:
                items.put(("done", self.generate(call, lambda piece: items.put(("piece", piece)), cancel.is_set)))
            except BaseException as exc:  # handed to the consumer, raised there
                items.put(("error", exc))

        ctx = contextvars.copy_context()
        threading.Thread(target=ctx.run, args=(work,), name="hullft-stream", daemon=True).start()
        try:
            while True:
                kind, payload = items.get()
                if kind == "error":
                    raise payload
                yield payload
                if kind == "done":
                    return
        finally:
            cancel.set()

    async def astream(self, call: Call) -> AsyncIterator[str | CallResult]:
        """`stream` for asyncio: the worker hands pieces to the running loop; cancelling stops generation."""
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
                put(("done", self.generate(call, lambda piece: put(("piece", piece)), cancel.is_set)))
            except BaseException as exc:
                put(("error", exc))

        worker = asyncio.ensure_future(asyncio.to_thread(work))
        _BACKGROUND.add(worker)
        worker.add_done_callback(_BACKGROUND.discard)
        try:
            while True:
                kind, payload = await items.get()
                if kind == "error":
                    raise payload
                yield payload
                if kind == "done":
                    return
        finally:
            cancel.set()

    async def agenerate(self, call: Call) -> CallResult:
        """`generate` off the event loop; cancelling the awaiting task stops generation at the next token."""
        cancel = threading.Event()
        try:
            return await asyncio.to_thread(self.generate, call, None, cancel.is_set)
        except asyncio.CancelledError:
            cancel.set()
            raise

    # ------------------------------------------------------------------ choose
    def choose(self, call: Call, choices: Sequence[str], *, strategy: Strategy = "loglik",
               scoring: Scoring = DEFAULT_SCORING, temperature: float = 0.0) -> ChoiceResult:
        """Answer with one of `choices` (e.g. a game's admissible commands), adapted like `generate`.

        Each choice's tokens, then the end-of-turn token, are scored given the rendered prompt, all
        choices in about one forward pass, and ranked by `scoring` ('sum' of log-probabilities, or
        their per-token 'mean'). The best is taken, or with `temperature` T > 0 one is drawn with
        probability ∝ exp(score / T), seeded by the call's sampling seed. `strategy='generate'` lets
        the model write its answer and matches it to the closest choice; an answer that names none
        is reported (`no_match`) and the best-scored choice is used. The chosen text is logged as
        the answer. `result.call` holds the `CallResult` (timings, usage, logged ids).
        """
        options = check_choices(choices)
        if strategy not in ("loglik", "generate"):
            raise InvalidArgumentError(f"strategy must be 'loglik' or 'generate', got {strategy!r}")
        rank_scores([[0.0]], scoring)  # validates the rule before the model runs
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
            raise InvalidArgumentError(f"choice_temperature must be a finite number >= 0, got {temperature!r}")
        tok = self.tokenizer
        end = [int(tok.eos_token_id)] if getattr(tok, "eos_token_id", None) is not None else []
        encoded = []
        for i, choice in enumerate(options):
            ids = list(tok(choice, add_special_tokens=False)["input_ids"])
            if not ids:
                raise InvalidArgumentError(f"choices[{i}] {choice!r} encodes to no tokens")
            encoded.append(ids + end)
        reserve = max(len(c) for c in encoded)
        if strategy == "generate":
            reserve = max(reserve, call.sampling.max_new_tokens)
        picked: dict[str, Any] = {}

        def act(model: Any, ids: list[int], result: CallResult) -> None:
            t0 = time.perf_counter()
            token_logprobs = score_continuations(model, ids, encoded)
            result.timings["score"] = time.perf_counter() - t0
            ranked = rank_scores(token_logprobs, scoring)
            best = max(range(len(options)), key=ranked.__getitem__)
            index, generated, no_match = best, None, None
            if strategy == "loglik" and temperature > 0:
                weights = torch.softmax(torch.tensor(ranked, dtype=torch.float64) / temperature, dim=0)
                draw = torch.Generator().manual_seed(call.sampling.seed)
                index = int(torch.multinomial(weights, 1, generator=draw).item())
            if strategy == "generate":
                for _ in sample_tokens(model, tok, ids, call.sampling, max_total=self.context_limit(),
                                       stats=result.stats):
                    pass
                result.timings["generate"] = result.stats.seconds
                generated = result.stats.text
                matched = match_answer(generated, options)
                if matched is None:
                    no_match = (f"the answer {generated.strip()!r:.80} names none of the {len(options)} choices; "
                                f"took the best-scored one, {options[best]!r}")
                    logger.warning("choose: %s", no_match)
                else:
                    index = matched
            result.text = options[index]
            result.stats.output_tokens = len(encoded[index])
            result.stats.finish_reason = "stop"
            picked.update(index=index, scores=ranked, token_logprobs=token_logprobs, generated=generated,
                          no_match=no_match)
            result.log_extra = {"chosen_by": strategy if no_match is None else "fallback",
                                "choice_index": index, "n_choices": len(options)}

        result = self.run(call, reserve, act)
        return ChoiceResult(
            text=result.text, index=picked["index"], choices=options, scores=picked["scores"],
            token_logprobs=picked["token_logprobs"], end_token=bool(end), scoring=scoring, strategy=strategy,
            temperature=float(temperature), generated=picked["generated"],
            matched=None if strategy == "loglik" else picked["no_match"] is None,
            no_match=picked["no_match"], report=result.report, call=result,
        )

    # ------------------------------------------------------------------ the shared path
    def run(self, call: Call, reserve: int, act: Callable[[Any, list[int], CallResult], None]) -> CallResult:
        """Fit the prompt → adapt → `act(model, prompt_ids, result)` → restore → log.

        Everything up to the restore runs under the model lock; `reserve` is the number of tokens
        kept free for the answer when the prompt is fitted to the context.
        """
        with self.lock:
            t0 = time.perf_counter()
            prompt = self.answered_prompt(call.conversation)
            ids, dropped = self.fit_prompt(prompt, reserve, call.active_tools)
            timings = {"prompt": time.perf_counter() - t0}
            report, use_base, mode = self._adapt(call)
            timings["adapt"] = report.timings.get("total", 0.0)
            result = CallResult(text="", report=report, stats=GenerationStats(), prompt_tokens=len(ids),
                                dropped=dropped, timings=timings)
            try:
                with self._answering_model(use_base) as model:
                    act(model, ids, result)
            finally:
                if self.adapter is not None and mode == "per_query":
                    self.adapter.reset()  # the next call (any thread) starts from the base model
        self._log(call, result, prompt)
        return result

    def _adapt(self, call: Call) -> tuple[AdaptationReport, bool, str]:
        """Run the adaptation; return its report, whether to answer with the base model, and the mode."""
        adapter = self.adapter
        if adapter is None:
            return skipped_report("no adapter: this runtime was created without a TestTimeAdapter"), True, "per_query"
        config = adapter.resolve(call.overrides)
        sel = config.selection
        common = {"method": sel.method, "mode": config.mode, "task": call.task, "n": sel.n, "k": sel.k}
        if not call.adapt:
            return skipped_report("adaptation turned off for this call (adapt=False)", **common), True, config.mode
        if not call.context.strip():
            return (skipped_report("empty adaptation context: the recent messages have no text", **common), True,
                    config.mode)
        if config.mode == "per_query":
            adapter.save_tasks()  # keep what per_task calls trained, then start from the base model
            adapter.reset()
        source = self.source if self.source is not None else adapter.source
        if call.namespace is not None and hasattr(source, "namespace") and hasattr(source, "log_step"):
            source = NamespacedSource(source, call.namespace)
        try:
            report = adapter.adapt(call.context, task=call.task, episode_id=call.episode_id, source=source,
                                   overrides=call.overrides, namespace=call.namespace)
        except Exception as exc:
            if self.on_adapt_error == "raise":
                raise
            logger.warning("adaptation failed, answering with the unadapted model: %s", exc, exc_info=True)
            report = skipped_report(f"adaptation failed: {type(exc).__name__}: {exc}", **common)
        return report, False, config.mode

    @contextmanager
    def _answering_model(self, use_base: bool) -> Iterator[Any]:
        if self.adapter is not None and use_base:
            with self.adapter.session.disabled() as model:
                yield model
        else:
            yield self.model

    def _log(self, call: Call, result: CallResult, prompt: Conversation) -> None:
        """Log the exchange; a decision row keeps `prompt`, the messages the model answered."""
        if self.memory is None or not call.log:
            return
        inputs = call.log_inputs
        if inputs is None:
            inputs = conversation_steps(trailing_messages(call.conversation), self.memory_kinds)
        steps = [dict(step) for step in inputs]
        kind = self.memory_kinds.get(ASSISTANT)
        if kind is not None and result.text.strip():
            metadata = {"role": ASSISTANT, "source": self.log_source, **call.log_metadata, "model": self.name,
                        "adapted": result.report.adapted, "selected_ids": list(result.report.selected_ids),
                        **result.log_extra}
            steps.append({"kind": kind, "text": result.text, "metadata": metadata})
        call_kind = self.memory_kinds.get("tool_call")
        for tool_call in result.tool_calls if call_kind is not None else ():
            steps.append({"kind": call_kind, "text": tool_call_text(tool_call.name, tool_call.arguments),
                          "metadata": {"role": ASSISTANT, "tool_call_id": tool_call.id, "name": tool_call.name,
                                       "source": self.log_source, **call.log_metadata}})
        if self.log_decisions and result.text.strip() and call.context.strip():
            steps.append(decision_step(call.context, prompt, result.text, actor=call.actor,
                                       reward=call.reward, metadata={"model": self.name, **result.log_extra}))
        if not steps:
            return
        t0 = time.perf_counter()
        try:
            with lock_for(self.memory):
                result.logged_ids = list(self.memory.add(
                    steps, namespace=call.namespace, episode_id=call.episode_id, task=call.task
                ))
        except Exception as exc:  # the answer stands; say why nothing was logged
            logger.warning("could not log the exchange to memory: %s", exc, exc_info=True)
            result.log_error = f"{type(exc).__name__}: {exc}"
        result.timings["log"] = time.perf_counter() - t0


def model_name(model: Any) -> str:
    """A short name for a model: its config's name_or_path (last part), else its class name."""
    config = getattr(base_module(model), "config", None)
    name = getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None)
    if isinstance(name, str) and name.strip():
        return Path(name).name or name
    return type(base_module(model)).__name__


def model_name_from_source(source: str) -> str:
    """A short name from a `LoadedModel.source` description."""
    head = str(source).split(" (", 1)[0].strip()
    return Path(head).name or head or "local-model"
