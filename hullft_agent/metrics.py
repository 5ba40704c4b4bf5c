"""Bits-per-byte (BPB) of texts under a causal LM.

BPB = −Σ log p(token) / (ln 2 · Σ bytes), summed over all scored documents (byte weighted, not a mean
of per-document BPB). Bytes are the UTF-8 bytes of exactly the text scored. Every token is scored: the
BOS token (EOS when the tokenizer has none) is prepended as context for the first token. A text longer
than the context window is scored in disjoint rolling windows: window k scores the tokens after its
first input, which is the last token of window k−1 (context only), so every token is scored once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hullft_agent.errors import InvalidArgumentError

__all__ = ["BPBResult", "DocumentScore", "bits_per_byte", "score_texts", "token_logprobs"]

_LN2 = math.log(2.0)
#: Positions per chunk when turning logits into float32 log-probabilities (bounds the extra memory).
_CHUNK_POSITIONS = 1024


@dataclass
class DocumentScore:
    """Negative log-likelihood (nats) of one document, its token count and UTF-8 byte count."""

    nll_nats: float
    n_tokens: int
    n_bytes: int

    @property
    def bpb(self) -> float:
        return self.nll_nats / (_LN2 * self.n_bytes)


@dataclass
class BPBResult:
    """Byte-weighted bits-per-byte over all documents, with the per-document scores."""

    bpb: float
    nll_nats: float
    n_bytes: int
    n_tokens: int
    documents: list[DocumentScore] = field(default_factory=list)


@dataclass
class _Window:
    doc: int
    #: Token ids fed to the model; the first is context only, the rest are scored.
    inputs: list[int]


def _validate_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise InvalidArgumentError("texts must be a list of strings, not a single string; wrap it as [text]")
    try:
        items = list(texts)
    except TypeError as exc:
        raise InvalidArgumentError(f"texts must be a list of strings, got {type(texts).__name__}") from exc
    if not items:
        raise InvalidArgumentError("texts is empty; pass at least one non-empty string")
    for index, text in enumerate(items):
        if not isinstance(text, str):
            raise InvalidArgumentError(f"texts[{index}] is {type(text).__name__}, expected a non-empty str")
        if not text:
            raise InvalidArgumentError(f"texts[{index}] is an empty string; every text must have at least one byte")
    return items


def _start_token(tokenizer: Any) -> int:
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise InvalidArgumentError("the tokenizer has neither a BOS nor an EOS token to give the first token a context")
    return int(start)


def _context_length(model: Any, max_length: int | None) -> int:
    if max_length is None:
        max_length = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if max_length is None:
            raise InvalidArgumentError("the model config has no max_position_embeddings; pass max_length explicitly")
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise InvalidArgumentError(
            f"max_length must be an int >= 2 (one context token plus one scored), got {max_length!r}"
        )
    return max_length


def _windows(doc: int, ids: list[int], start: int, max_length: int) -> list[_Window]:
    """Split [start] + ids into windows of at most max_length inputs, overlapping by one token."""
    sequence = [start, *ids]
    step = max_length - 1
    return [_Window(doc, sequence[s : s + max_length]) for s in range(0, len(ids), step)]


def _tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    out = [list(map(int, ids)) for ids in encoded]
    for index, ids in enumerate(out):
        if not ids:
            raise InvalidArgumentError(f"texts[{index}] produced no tokens; nothing to score")
    return out


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _window_token_nll(
    model: Any, windows: list[_Window], *, pad_id: int, batch_size: int
) -> list[torch.Tensor]:
    """Per-window float32 CPU tensor of −log p for each scored token (inputs[1:]), in input order."""
    device = _model_device(model)
    results: list[torch.Tensor | None] = [None] * len(windows)
    # Longest first, so each batch holds windows of similar length (less padding); results keep order.
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i].inputs))
    for begin in range(0, len(order), batch_size):
        batch = order[begin : begin + batch_size]
        width = len(windows[batch[0]].inputs)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            ids = windows[index].inputs
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[row, : len(ids)] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
        targets = input_ids[:, 1:]
        nll = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
        for pos in range(0, width - 1, _CHUNK_POSITIONS):
            end = min(pos + _CHUNK_POSITIONS, width - 1)
            chunk = logits[:, pos:end].float()
            picked = chunk.gather(-1, targets[:, pos:end, None].to(chunk.device)).squeeze(-1)
            nll[:, pos:end] = torch.logsumexp(chunk, dim=-1) - picked
        nll = nll.cpu()
        for row, index in enumerate(batch):
            results[index] = nll[row, : len(windows[index].inputs) - 1]
        del logits
    return [r for r in results if r is not None]


def _score_tokens(
    model: Any, tokenizer: Any, texts: list[str], *, max_length: int | None, batch_size: int
) -> list[torch.Tensor]:
    """−log p (nats, float32, CPU) of every token of every text, in order; one tensor per text."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be an int >= 1, got {batch_size!r}")
    context = _context_length(model, max_length)
    start = _start_token(tokenizer)
    token_ids = _tokenize(tokenizer, texts)
    windows = [w for doc, ids in enumerate(token_ids) for w in _windows(doc, ids, start, context)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start

    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.no_grad():
            per_window = _window_token_nll(model, windows, pad_id=pad_id, batch_size=batch_size)
    finally:
        if was_training:
            model.train()

    pieces: list[list[torch.Tensor]] = [[] for _ in texts]
    for window, nll in zip(windows, per_window, strict=True):
        pieces[window.doc].append(nll)
    out = [torch.cat(p) for p in pieces]
    for ids, nll in zip(token_ids, out, strict=True):
        if nll.numel() != len(ids):  # every token scored exactly once
            raise AssertionError(f"scored {nll.numel()} tokens of {len(ids)}")
    return out


def token_logprobs(
    model: Any, tokenizer: Any, text: str, max_length: int | None = None, *, batch_size: int = 8
) -> torch.Tensor:
    """log p of each token of `text` (tokenized without special tokens), in order; float32 on CPU.

    The first token is conditioned on the BOS token; windows as in `score_texts`.
    """
    (text,) = _validate_texts([text])
    return -_score_tokens(model, tokenizer, [text], max_length=max_length, batch_size=batch_size)[0]


def score_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int | None = None,
    batch_size: int = 8,
) -> BPBResult:
    """Score `texts` under `model`: total and per-document NLL, tokens, bytes and byte-weighted BPB.

    `max_length` is the context window (default: the model's max_position_embeddings); longer texts are
    scored in disjoint rolling windows. The model is put in eval mode for the call (its training mode is
    restored after) and inputs go to the device of its first parameter.
    """
    items = _validate_texts(texts)
    nlls = _score_tokens(model, tokenizer, items, max_length=max_length, batch_size=batch_size)
    documents = [
        DocumentScore(
            nll_nats=float(nll.double().sum()), n_tokens=int(nll.numel()), n_bytes=len(text.encode("utf-8"))
        )
        for text, nll in zip(items, nlls, strict=True)
    ]
    total_nll = math.fsum(d.nll_nats for d in documents)
    total_bytes = sum(d.n_bytes for d in documents)
    return BPBResult(
        bpb=total_nll / (_LN2 * total_bytes),
        nll_nats=total_nll,
        n_bytes=total_bytes,
        n_tokens=sum(d.n_tokens for d in documents),
        documents=documents,
    )


def bits_per_byte(model: Any, tokenizer: Any, texts: Sequence[str], **kwargs: Any) -> float:
    """Byte-weighted bits-per-byte of `texts`; keyword arguments as for `score_texts`."""
    return score_texts(model, tokenizer, texts, **kwargs).bpb
