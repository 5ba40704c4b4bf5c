"""Bits-per-byte against hand computations on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from hullft_agent.metrics import BPBResult, DocumentScore, bits_per_byte, score_texts, token_logprobs

SHORT = "The agent opens the fridge."
LONGER = "You are in a kitchen. There is a stove, a counter and a closed fridge here. > go north"
UNICODE = "Ünïcödé text, emoji 🙂 and 12345."


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _hand_nll(model, tokenizer, text: str, max_length: int | None = None) -> tuple[float, int]:
    """Sum of −log p over every token of text by plain unbatched forwards; (nll, n_tokens).

    Windows of `max_length` inputs (default: the model's positions) start at 0, L−1, 2(L−1), ...
    """
    ids = _ids(tokenizer, text)
    sequence = [tokenizer.bos_token_id, *ids]
    length = max_length or model.config.max_position_embeddings
    total, scored = 0.0, 0
    start = 0
    with torch.no_grad():
        while start < len(ids):  # window: inputs sequence[start : start+length], targets shifted by one
            window = sequence[start : start + length]
            logits = model(input_ids=torch.tensor([window])).logits[0].float()
            logp = torch.log_softmax(logits, dim=-1)
            for pos in range(len(window) - 1):
                total -= float(logp[pos, window[pos + 1]])
                scored += 1
            start += length - 1
    return total, scored


def test_bpb_matches_hand_computation_including_first_token(tiny_model, tiny_tokenizer):
    ids = _ids(tiny_tokenizer, SHORT)
    inputs = torch.tensor([[tiny_tokenizer.bos_token_id, *ids]])
    with torch.no_grad():
        logp = torch.log_softmax(tiny_model(input_ids=inputs).logits[0].float(), dim=-1)
    # position i predicts token i+1; position 0 (BOS) predicts the first real token
    expected_nll = -sum(float(logp[i, tok]) for i, tok in enumerate(ids))
    n_bytes = len(SHORT.encode("utf-8"))

    result = score_texts(tiny_model, tiny_tokenizer, [SHORT])
    assert isinstance(result, BPBResult)
    assert result.n_tokens == len(ids)
    assert result.n_bytes == n_bytes
    assert result.nll_nats == pytest.approx(expected_nll, rel=1e-5)
    assert result.bpb == pytest.approx(expected_nll / (math.log(2) * n_bytes), rel=1e-5)
    assert bits_per_byte(tiny_model, tiny_tokenizer, [SHORT]) == pytest.approx(result.bpb, rel=1e-6)

    per_token = token_logprobs(tiny_model, tiny_tokenizer, SHORT)
    assert per_token.shape == (len(ids),)
    assert per_token[0].item() == pytest.approx(float(logp[0, ids[0]]), abs=1e-5)
    assert torch.allclose(per_token, torch.stack([logp[i, t] for i, t in enumerate(ids)]), atol=1e-5)


def test_total_is_byte_weighted_not_mean_of_documents(tiny_model, tiny_tokenizer):
    texts = [SHORT, LONGER * 2]
    result = score_texts(tiny_model, tiny_tokenizer, texts)
    assert len(result.documents) == 2
    for text, doc in zip(texts, result.documents, strict=True):
        nll, n_tokens = _hand_nll(tiny_model, tiny_tokenizer, text)
        assert isinstance(doc, DocumentScore)
        assert doc.n_bytes == len(text.encode("utf-8"))
        assert doc.n_tokens == n_tokens
        assert doc.nll_nats == pytest.approx(nll, rel=1e-5)
        assert doc.bpb == pytest.approx(nll / (math.log(2) * doc.n_bytes), rel=1e-5)
    weighted = sum(d.nll_nats for d in result.documents) / (
        math.log(2) * sum(d.n_bytes for d in result.documents)
    )
    mean = sum(d.bpb for d in result.documents) / 2
    assert result.bpb == pytest.approx(weighted, rel=1e-9)
    assert abs(weighted - mean) > 1e-3  # the two definitions really differ on these documents
    assert result.nll_nats == pytest.approx(sum(d.nll_nats for d in result.documents), rel=1e-12)
    assert result.n_tokens == sum(d.n_tokens for d in result.documents)


def test_long_text_uses_disjoint_windows_and_scores_every_token_once(tiny_model, tiny_tokenizer):
    text = " ".join([LONGER, SHORT, UNICODE] * 3)
    ids = _ids(tiny_tokenizer, text)
    assert len(ids) > 3 * 16  # several windows of 16 positions
    expected_nll, scored = _hand_nll(tiny_model, tiny_tokenizer, text, max_length=16)
    assert scored == len(ids)

    result = score_texts(tiny_model, tiny_tokenizer, [text], max_length=16)
    assert result.n_tokens == len(ids)
    assert result.nll_nats == pytest.approx(expected_nll, rel=1e-5)
    per_token = token_logprobs(tiny_model, tiny_tokenizer, text, max_length=16)
    assert per_token.shape == (len(ids),)
    assert float(-per_token.double().sum()) == pytest.approx(expected_nll, rel=1e-5)
    # tokens 15.. are predicted from a short window, not the full prefix: the result differs from one pass
    assert result.nll_nats != pytest.approx(
        _hand_nll(tiny_model, tiny_tokenizer, text, max_length=64)[0], rel=1e-4
    )


def test_default_window_is_the_model_context(tiny_model, tiny_tokenizer):
    text = " ".join([LONGER] * 6)
    assert len(_ids(tiny_tokenizer, text)) > 64  # beyond the tiny model's 64 positions
    expected_nll, _ = _hand_nll(tiny_model, tiny_tokenizer, text, max_length=64)
    assert score_texts(tiny_model, tiny_tokenizer, [text]).nll_nats == pytest.approx(expected_nll, rel=1e-5)


def test_batched_equals_unbatched(tiny_model, tiny_tokenizer):
    texts = [SHORT, LONGER, UNICODE, "x", LONGER * 3, SHORT + " " + UNICODE]
    one = score_texts(tiny_model, tiny_tokenizer, texts, batch_size=1, max_length=32)
    four = score_texts(tiny_model, tiny_tokenizer, texts, batch_size=4, max_length=32)
    assert one.n_tokens == four.n_tokens
    for a, b in zip(one.documents, four.documents, strict=True):
        assert a.n_tokens == b.n_tokens and a.n_bytes == b.n_bytes
        assert a.nll_nats == pytest.approx(b.nll_nats, abs=1e-5 * max(1, a.n_tokens))
        assert a.bpb == pytest.approx(b.bpb, abs=1e-5)
    assert one.bpb == pytest.approx(four.bpb, abs=1e-5)


def test_non_ascii_counts_utf8_bytes(tiny_model, tiny_tokenizer):
    assert len(UNICODE.encode("utf-8")) > len(UNICODE)
    result = score_texts(tiny_model, tiny_tokenizer, [UNICODE])
    assert result.n_bytes == len(UNICODE.encode("utf-8"))
    nll, _ = _hand_nll(tiny_model, tiny_tokenizer, UNICODE)
    assert result.bpb == pytest.approx(nll / (math.log(2) * len(UNICODE.encode("utf-8"))), rel=1e-5)


def test_restores_training_mode(tiny_model, tiny_tokenizer):
    tiny_model.train()
    score_texts(tiny_model, tiny_tokenizer, [SHORT])
    assert tiny_model.training
    tiny_model.eval()
    score_texts(tiny_model, tiny_tokenizer, [SHORT])
    assert not tiny_model.training


@pytest.mark.parametrize(
    ("texts", "match"),
    [
        ([], "empty"),
        (["ok", ""], r"texts\[1\]"),
        (["ok", "fine", 3], r"texts\[2\]"),
        ([None], r"texts\[0\]"),
        ("a single string", "list"),
    ],
)
def test_bad_inputs_raise(tiny_model, tiny_tokenizer, texts, match):
    with pytest.raises(ValueError, match=match):
        score_texts(tiny_model, tiny_tokenizer, texts)


def test_bad_options_raise(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="max_length"):
        score_texts(tiny_model, tiny_tokenizer, [SHORT], max_length=1)
    with pytest.raises(ValueError, match="batch_size"):
        score_texts(tiny_model, tiny_tokenizer, [SHORT], batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        token_logprobs(tiny_model, tiny_tokenizer, "")
