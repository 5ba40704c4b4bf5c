"""Test-time training on a multiset of sequences, with gradient reuse.

The multiset is `texts[i]` repeated `counts[i]` times, trained in the given order with the repeats of
one sequence consecutive, one Adam step per instance and batch size 1. For a sequence of
multiplicity J a fresh forward+backward runs on repeats j = 0, r, 2r, ... (r = refresh interval);
the other repeats step again with the gradient of the last fresh pass.

An instance is a plain text (the loss on every token) or a `Completion`, a prompt and the answer the
model should give to it, with the loss on the answer only: an agent decides P(answer | prompt), and a
whole-text loss on a long prompt is dominated by prompt tokens the agent never has to produce.
"""

from __future__ import annotations

import logging
import math
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hullft_agent.config import FinetuneConfig
from hullft_agent.errors import ContextOverflowError, InvalidArgumentError, InvalidTypeError
from hullft_agent.finetune.session import FinetuneSession

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What one `train_multiset` call did.

    steps: optimizer steps taken; passes: fresh forward+backward passes run (the failed one
    included when a loss was non-finite); losses / pass_times: loss and seconds of each fresh pass;
    tokens: non-padding tokens fed through fresh passes (what the compute scales with);
    loss_tokens: the tokens of those passes whose prediction counts in the loss (every token after
    BOS for a text, the answer and its end token for a `Completion`); ok False with `stopped_reason`
    when training stopped early (the session is then reset to its initial state).
    """

    steps: int
    passes: int
    losses: list[float] = field(default_factory=list)
    pass_times: list[float] = field(default_factory=list)
    wall_time: float = 0.0
    ok: bool = True
    stopped_reason: str | None = None
    tokens: int = 0
    loss_tokens: int = 0


@dataclass(frozen=True)
class Completion:
    """A prompt -> answer training instance: the loss counts only the answer and its end token.

    `prompt` is the text exactly as the model receives it (chat template and generation prompt
    already applied by the caller), so training conditions on the tokens the agent really sends.
    `answer` is what the model should reply; it must contain non-whitespace text, because a blank
    answer would teach the model to stop at once.
    """

    prompt: str
    answer: str

    def __post_init__(self) -> None:
        for name in ("prompt", "answer"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise InvalidTypeError(f"Completion.{name} must be a string, got {type(value).__name__}")
        if not self.answer.strip():
            raise InvalidArgumentError(f"Completion.answer must contain text, got {self.answer!r}")


def bos_token_id(tokenizer: Any) -> int:
    """The token prepended to every sequence: BOS, else EOS (as the BPB scorer does)."""
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise InvalidArgumentError("the tokenizer has neither a BOS nor an EOS token to prepend")


def _pad_token_id(tokenizer: Any) -> int:
    value = getattr(tokenizer, "pad_token_id", None)
    if value is not None:
        return int(value)
    value = getattr(tokenizer, "eos_token_id", None)
    return int(value) if value is not None else bos_token_id(tokenizer)


def encode_for_training(
    tokenizer: Any,
    text: str | Completion,
    max_length: int,
    pad_to: int | None = None,
    *,
    mask_prompt: bool = True,
) -> dict[str, Tensor]:
    """Tokenise one training instance: BOS + tokens, truncated, optionally right-padded.

    Returns `input_ids`, `attention_mask` and `labels`, each of shape (1, L). The sequence is cut to
    `max_length` tokens (BOS included), and to `pad_to` when set; with `pad_to` it is then padded to
    exactly `pad_to` tokens with the pad token, attention mask 0 and label -100 on the pads.

    A text is cut at its end. A `Completion` is BOS + prompt + answer + end token, see
    `_completion_ids`: the prompt loses its oldest tokens first, the answer is never cut. With
    `mask_prompt` (the default) BOS and the prompt are labelled -100, so the loss counts only the
    answer and its end token; `mask_prompt=False` keeps the same ids with every label (the
    whole-sequence baseline).
    """
    if max_length < 2:
        raise InvalidArgumentError(f"max_length must be at least 2 (BOS and one token), got {max_length}")
    if pad_to is not None and pad_to < 2:
        raise InvalidArgumentError(f"pad_to must be at least 2, got {pad_to}")
    limit = max_length if pad_to is None else min(max_length, pad_to)
    if isinstance(text, Completion):
        ids, n_context = _completion_ids(tokenizer, text, limit, max_length, pad_to)
    else:
        ids = [bos_token_id(tokenizer), *tokenizer(text, add_special_tokens=False)["input_ids"]][:limit]
        n_context = 0
    n_real = len(ids)
    if pad_to is not None:
        ids = ids + [_pad_token_id(tokenizer)] * (pad_to - n_real)
    input_ids = torch.tensor([ids], dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    attention_mask[0, :n_real] = 1
    labels = input_ids.clone()
    labels[0, n_real:] = -100
    if mask_prompt:
        labels[0, :n_context] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _completion_ids(
    tokenizer: Any, completion: Completion, limit: int, max_length: int, pad_to: int | None
) -> tuple[list[int], int]:
    """Ids of BOS + prompt + answer + end token, and how many lead ids (BOS + prompt) are context.

    Prompt and answer are tokenised separately so the boundary is exact and the answer's tokens are
    the ones the runtime scores for a choice. BOS is not doubled when the rendered prompt already
    starts with it (SmolLM2's template opens with <|im_start|>, its BOS), so the ids match the prompt
    the runtime feeds. The end token is the tokenizer's EOS (SmolLM2: <|im_end|>, which closes the
    assistant turn and stops generation; `choose` scores it after every choice too), unless the answer
    already ends with it. Over `limit`, the prompt's oldest tokens go first; an answer that does not
    fit even without prompt raises `ContextOverflowError` rather than training a cut answer.
    """
    bos = bos_token_id(tokenizer)
    prompt = list(tokenizer(completion.prompt, add_special_tokens=False)["input_ids"])
    if prompt[:1] == [bos]:
        prompt = prompt[1:]
    answer = list(tokenizer(completion.answer, add_special_tokens=False)["input_ids"])
    if not answer:
        raise InvalidArgumentError(f"the answer {completion.answer!r:.60} encodes to no tokens")
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and answer[-1] != int(eos):
        answer.append(int(eos))
    room = limit - 1 - len(answer)
    if room < 0:
        raise ContextOverflowError(
            f"the answer {completion.answer!r:.60} takes {len(answer)} tokens (end token included) but "
            f"only {limit - 1} fit after BOS (max_length={max_length}, pad_to={pad_to}); raise max_length "
            "or shorten the answer"
        )
    if len(prompt) > room:
        logger.debug("completion prompt cut from %d to its last %d tokens", len(prompt), room)
        prompt = prompt[len(prompt) - room :]
    return [bos, *prompt, *answer], 1 + len(prompt)


def _validate(texts: Sequence[str | Completion], counts: Sequence[int]) -> list[int]:
    if isinstance(texts, (str, Completion)):
        raise InvalidArgumentError(
            "texts must be a sequence of strings or Completions, not a single string or Completion"
        )
    if len(texts) != len(counts):
        raise InvalidArgumentError(f"texts and counts differ in length ({len(texts)} vs {len(counts)})")
    clean: list[int] = []
    for i, (text, count) in enumerate(zip(texts, counts, strict=True)):
        if not isinstance(text, Completion) and (not isinstance(text, str) or not text):
            raise InvalidArgumentError(f"texts[{i}] must be a non-empty string or a Completion, got {text!r:.40}")
        if isinstance(count, bool):
            raise InvalidArgumentError(f"counts[{i}] must be an integer, got {count!r}")
        try:
            value = operator.index(count)
        except TypeError:
            raise InvalidArgumentError(f"counts[{i}] must be an integer, got {count!r}") from None
        if value < 0:
            raise InvalidArgumentError(f"counts[{i}] must be >= 0, got {value}")
        clean.append(value)
    return clean


_FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu")


def _make_optimizer(params: list[nn.Parameter], config: FinetuneConfig) -> torch.optim.Optimizer:
    """Fresh Adam for one call.

    The fused kernel (one kernel per step on CUDA, one per tensor on CPU) keeps the per-step cost far
    below a forward+backward pass: for the ~420 LoRA tensors of a 135M model on a CPU it is about 5x
    faster than the multi-tensor (foreach) path. Falls back to foreach where fused is unsupported.
    """
    fused = all(p.device.type in _FUSED_DEVICES and torch.is_floating_point(p) for p in params)
    if fused:
        return torch.optim.Adam(params, lr=config.lr, eps=config.adam_eps, fused=True)
    return torch.optim.Adam(params, lr=config.lr, eps=config.adam_eps, foreach=True)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def train_multiset(
    session: FinetuneSession,
    texts: Sequence[str | Completion],
    counts: Sequence[int],
    config: FinetuneConfig | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train `session` on the multiset {texts[i] x counts[i]} in the given order.

    Each instance is a text (loss on every token) or a `Completion` (loss on its answer, or on
    every token with `config.mask_prompt=False`); the two can be mixed.

    One Adam step per instance (sum(counts) steps), a fresh forward+backward on repeats 0, r, 2r, ...
    of each sequence and the cached gradient on the others (sum(ceil(J / r)) passes). A count of 0
    skips its text. A non-finite loss stops training, resets the session and returns `ok=False`; any
    exception resets the session and is re-raised, so the model is never left half-adapted.
    `on_step(steps_done)` is called after every optimizer step (progress bars).
    """
    config = config if config is not None else FinetuneConfig()
    start = time.perf_counter()
    multiplicities = _validate(texts, counts)
    if config.seed is not None:
        torch.manual_seed(config.seed)

    model = session.model
    device = _model_device(model)
    encoded: dict[str | Completion, tuple[dict[str, Tensor], int, int]] = {}
    plan: list[tuple[dict[str, Tensor], int, int, int]] = []
    for text, count in zip(texts, multiplicities, strict=True):
        if count == 0:
            continue
        if text not in encoded:
            enc = encode_for_training(
                session.tokenizer, text, config.max_length, config.pad_to, mask_prompt=config.mask_prompt
            )
            n_real = int(enc["attention_mask"].sum())
            n_loss = int((enc["labels"][0, 1:] != -100).sum())  # the model shifts labels by one
            encoded[text] = ({key: value.to(device) for key, value in enc.items()}, n_real, n_loss)
        enc, n_real, n_loss = encoded[text]
        plan.append((enc, count, n_real, n_loss))

    result = TrainResult(steps=0, passes=0)
    if not plan:
        result.wall_time = time.perf_counter() - start
        return result

    params = session.trainable_parameters()
    optimizer = _make_optimizer(params, config)
    r = config.refresh_interval
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    losses, pass_times = result.losses, result.pass_times
    perf_counter = time.perf_counter
    if session.uses_dropout:
        model.train()
    try:
        steps = passes = tokens = loss_tokens = 0
        for enc, count, n_real, n_loss in plan:
            cached: list[Tensor | None] = []
            for j in range(count):
                if j % r == 0:
                    optimizer.zero_grad(set_to_none=True)
                    t0 = perf_counter()
                    loss = model(**enc, use_cache=False).loss
                    loss_value = loss.item()
                    passes += 1
                    if not math.isfinite(loss_value):
                        pass_times.append(perf_counter() - t0)
                        losses.append(loss_value)
                        result.steps, result.passes = steps, passes
                        result.tokens, result.loss_tokens = tokens, loss_tokens
                        result.ok = False
                        result.stopped_reason = f"non-finite loss at step {steps + 1}"
                        logger.warning(
                            "%s; resetting the session to its initial state", result.stopped_reason
                        )
                        session.reset()
                        result.wall_time = perf_counter() - start
                        return result
                    loss.backward()
                    if sync is not None:
                        sync()
                    pass_times.append(perf_counter() - t0)
                    losses.append(loss_value)
                    tokens += n_real
                    loss_tokens += n_loss
                    if r > 1 and j + 1 < count:
                        # Adam (no weight decay, no maximize, no grad scaler) never writes to .grad and
                        # zero_grad(set_to_none=True) only drops the reference, so the cached gradient
                        # tensors can be shared with the reuse steps without a copy (the tests check
                        # this against a loop that clones them).
                        cached = [p.grad for p in params]
                else:
                    for p, grad in zip(params, cached, strict=True):
                        p.grad = grad
                optimizer.step()
                steps += 1
                if on_step is not None:
                    on_step(steps)
        result.steps, result.passes = steps, passes
        result.tokens, result.loss_tokens = tokens, loss_tokens
    except BaseException:
        logger.warning("training failed; resetting the session to its initial state")
        session.reset()
        raise
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.eval()
    result.wall_time = time.perf_counter() - start
    logger.debug(
        "trained %d steps with %d fresh passes (%d tokens, %d in the loss) in %.3fs",
        result.steps,
        result.passes,
        result.tokens,
        result.loss_tokens,
        result.wall_time,
    )
    return result
