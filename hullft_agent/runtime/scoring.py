"""Log-likelihood of several continuations of one prompt in about one forward pass.

The prompt runs once and its keys/values are cached. All continuations are then packed into one
sequence after it, with a 4D attention mask that lets each continuation token see the whole prompt
and the earlier tokens of its own continuation only (position ids restart at the prompt's end for
each one). So 30 admissible commands of ~6 tokens cost one prompt pass plus one pass over ~180
tokens, instead of 30 prompt passes; the keys/values of the prompt are never copied per choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hullft_agent.errors import InvalidArgumentError
from hullft_agent.runtime.generation import cache_argument, model_device

#: Packed continuation tokens per forward pass (bounds the mask, which is tokens x (prompt + tokens)).
MAX_PACKED_TOKENS = 1024


def _model_dtype(model: Any) -> torch.dtype:
    try:
        return next(p.dtype for p in model.parameters() if torch.is_floating_point(p))
    except StopIteration:
        return torch.float32


def _groups(lengths: Sequence[int], limit: int) -> list[list[int]]:
    """Consecutive indices packed so that each group holds at most `limit` tokens (one item at least)."""
    groups: list[list[int]] = []
    size = 0
    for i, n in enumerate(lengths):
        if groups and size + n <= limit:
            groups[-1].append(i)
            size += n
        else:
            groups.append([i])
            size = n
    return groups


def score_continuations(
    model: Any,
    prompt_ids: Sequence[int],
    continuations: Sequence[Sequence[int]],
    *,
    max_packed_tokens: int = MAX_PACKED_TOKENS,
) -> list[list[float]]:
    """Per-token log-probabilities (nats) of each continuation given the prompt.

    `result[i][j]` = log p(continuations[i][j] | prompt, continuations[i][:j]). Every continuation
    must hold at least one token. The model's own state (training flag, weights) is left as it was.
    """
    if not prompt_ids:
        raise InvalidArgumentError("the prompt must hold at least one token")
    conts = [list(c) for c in continuations]
    for i, c in enumerate(conts):
        if not c:
            raise InvalidArgumentError(f"continuation {i} is empty; every choice needs at least one token")
    if not conts:
        return []
    device = model_device(model)
    dtype = _model_dtype(model)
    n_prompt = len(prompt_ids)
    cache_kw = cache_argument(model)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    results: list[list[float]] = [[] for _ in conts]
    try:
        with torch.inference_mode():
            prompt = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
            out = model(input_ids=prompt, use_cache=True)
            cache = getattr(out, cache_kw)
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            for group in _groups([len(c) for c in conts], max_packed_tokens):
                packed = [tok for i in group for tok in conts[i]]
                total = len(packed)
                # additive mask: 0 where a token may attend, the dtype's minimum elsewhere
                allowed = torch.zeros(total, n_prompt + total, dtype=torch.bool, device=device)
                allowed[:, :n_prompt] = True
                positions = torch.empty(total, dtype=torch.long, device=device)
                offset = 0
                for i in group:
                    n = len(conts[i])
                    allowed[offset : offset + n, n_prompt + offset : n_prompt + offset + n] = torch.tril(
                        torch.ones(n, n, dtype=torch.bool, device=device)
                    )
                    positions[offset : offset + n] = torch.arange(n_prompt, n_prompt + n, device=device)
                    offset += n
                mask = torch.zeros(1, 1, total, n_prompt + total, dtype=dtype, device=device)
                mask.masked_fill_(~allowed[None, None], torch.finfo(dtype).min)
                logits = model(
                    input_ids=torch.tensor([packed], dtype=torch.long, device=device),
                    attention_mask=mask,
                    position_ids=positions[None],
                    use_cache=True,
                    **{cache_kw: cache},
                ).logits[0]
                cache.crop(-total)  # drop this group's keys/values: the next group sees the prompt only
                logp = torch.log_softmax(logits.float(), dim=-1)
                offset = 0
                for i in group:
                    tokens = conts[i]
                    scores = [float(first[tokens[0]])]
                    if len(tokens) > 1:
                        rows = torch.arange(offset, offset + len(tokens) - 1, device=device)
                        targets = torch.tensor(tokens[1:], dtype=torch.long, device=device)
                        scores += logp[rows, targets].tolist()
                    results[i] = scores
                    offset += len(tokens)
    finally:
        if was_training:
            model.train()
    return results
