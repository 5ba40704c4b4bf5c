"""A token-by-token sampling loop with a KV cache, stop strings and incremental decoding.

Invoke and stream run the very same loop (invoke just joins the pieces), so with a fixed seed the
streamed text is exactly the invoked text. Sampling draws from a private `torch.Generator`, so a call
never touches (or depends on) the global torch RNG.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

_REPLACEMENT = "\ufffd"  # what a byte-level tokenizer decodes an unfinished UTF-8 sequence to


@dataclass
class SamplingParams:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0
    stop: Sequence[str] = ()
    time_limit: float | None = None


@dataclass
class GenerationStats:
    """Filled in while the loop runs; read it after the iterator is exhausted."""

    output_tokens: int = 0
    finish_reason: str = "length"
    text: str = ""
    seconds: float = 0.0
    token_ids: list[int] = field(default_factory=list)


class StopStringFilter:
    """Turns the growing decoded text into safe-to-emit pieces.

    A piece is held back while the text ends with the start of a stop string (it may become one) or
    with an unfinished UTF-8 character; once a stop string appears the text is cut just before it.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = [s for s in stop if s]
        self.emitted = 0
        self.stopped = False

    def _holdback(self, text: str) -> int:
        hold = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:k]):
                    hold = k
                    break
        unfinished = len(text) - len(text.rstrip(_REPLACEMENT))
        return max(hold, unfinished)

    def push(self, text: str) -> str:
        """The new piece to emit for the full decoded text so far ('' if nothing is safe yet)."""
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            end = max(cut, self.emitted)
        else:
            end = max(len(text) - self._holdback(text), self.emitted)
        piece = text[self.emitted : end]
        self.emitted = end
        return piece

    def flush(self, text: str) -> str:
        """Whatever is left once generation ended (no stop string can complete any more)."""
        if self.stopped:
            return ""
        piece = text[self.emitted :]
        self.emitted = len(text)
        return piece


def _processors(params: SamplingParams) -> LogitsProcessorList:
    procs = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.temperature > 0:
        if params.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(params.temperature))
        if params.top_p < 1.0:
            procs.append(TopPLogitsWarper(params.top_p))
    return procs


def model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def cache_argument(model: Any) -> str:
    """The name of the KV cache (forward keyword and output field): `cache` in newer transformers, else `past_key_values`."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    try:
        params = inspect.signature(type(base).forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def sample_tokens(
    model: Any,
    tokenizer: Any,
    input_ids: list[int],
    params: SamplingParams,
    *,
    max_total: int | None,
    stats: GenerationStats,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[str]:
    """Yield text pieces as tokens are sampled; `stats` says how it ended.

    Stops at an end-of-sequence token or a stop string (finish_reason 'stop'), after
    `max_new_tokens` or at the context limit `max_total` ('length'), after `time_limit` seconds
    ('time_limit'), or when `should_stop()` turns true ('cancelled').
    """
    start = time.perf_counter()
    device = model_device(model)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(params.seed))
    processors = _processors(params)
    eos = eos_token_ids(model, tokenizer)
    cache_kw = cache_argument(model)
    filt = StopStringFilter(params.stop)
    budget = params.max_new_tokens
    if max_total is not None:
        budget = min(budget, max_total - len(input_ids))
    all_ids = torch.tensor([input_ids], dtype=torch.long, device=device)
    step_ids = all_ids
    past = None
    generated: list[int] = []
    pieces: list[str] = []
    text = ""
    stats.finish_reason = "length"
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.inference_mode():
            while len(generated) < budget:
                if should_stop is not None and should_stop():
                    stats.finish_reason = "cancelled"
                    break
                if params.time_limit is not None and time.perf_counter() - start > params.time_limit:
                    stats.finish_reason = "time_limit"
                    break
                out = model(input_ids=step_ids, use_cache=True, **{cache_kw: past})
                past = getattr(out, cache_kw)
                logits = out.logits[:, -1, :].float()
                scores = processors(all_ids, logits) if len(processors) else logits
                if params.temperature > 0:
                    probs = torch.softmax(scores, dim=-1)
                    token = torch.multinomial(probs, 1, generator=generator)
                else:
                    token = torch.argmax(scores, dim=-1, keepdim=True)
                token_id = int(token.item())
                if token_id in eos:
                    stats.finish_reason = "stop"
                    break
                generated.append(token_id)
                all_ids = torch.cat([all_ids, token.view(1, 1)], dim=1)
                step_ids = token.view(1, 1)
                text = tokenizer.decode(generated, skip_special_tokens=True)
                piece = filt.push(text)
                if piece:
                    pieces.append(piece)
                    yield piece
                if filt.stopped:
                    stats.finish_reason = "stop"
                    break
        tail = filt.flush(text)
        if tail:
            pieces.append(tail)
            yield tail
    finally:
        if was_training:
            model.train()
        stats.output_tokens = len(generated)
        stats.token_ids = generated
        stats.text = "".join(pieces)
        stats.seconds = time.perf_counter() - start
