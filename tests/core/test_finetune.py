"""Finetuning sessions (LoRA / full) and the multiset trainer with gradient reuse, on the tiny Llama."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model
from safetensors.torch import load_file

import hullft_agent.finetune.trainer as trainer_module
from hullft_agent.config import FinetuneConfig, LoRAConfig
from hullft_agent.finetune import (
    FinetuneSession,
    FullSession,
    LoRASession,
    TrainResult,
    create_session,
    encode_for_training,
    train_multiset,
)

TEXTS = [
    "The agent opens the fridge and takes the yellow potato.",
    "> go north\nYou enter the pantry. A shelf holds salt and pepper.",
    "def add(a, b):\n    return a + b\n",
]
PROBE = "You are in a kitchen. There is a stove, a counter and a closed fridge here."


def _cfg(**kwargs) -> FinetuneConfig:
    kwargs.setdefault("lr", 1e-2)
    kwargs.setdefault("max_length", 48)
    return FinetuneConfig(**kwargs)


def _logits(model, tokenizer, text: str = PROBE) -> torch.Tensor:
    enc = encode_for_training(tokenizer, text, max_length=48)
    with torch.no_grad():
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.clone()


def _params(session: FinetuneSession) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in session.named_trainable_parameters().items()}


class _Recorder:
    """Patches the trainer's optimizer factory to keep the optimizer and the params after each step."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.optimizers: list[torch.optim.Optimizer] = []
        self.trajectory: list[list[torch.Tensor]] = []
        real = trainer_module._make_optimizer

        def make(params, config):
            opt = real(params, config)
            step = opt.step

            def recorded_step(*args, **kwargs):
                out = step(*args, **kwargs)
                self.trajectory.append([p.detach().clone() for p in params])
                return out

            opt.step = recorded_step
            self.optimizers.append(opt)
            return opt

        monkeypatch.setattr(trainer_module, "_make_optimizer", make)


def _reference_training(session, texts, counts, config, r):
    """Plain step-by-step loop: own Adam, fresh gradient on repeats 0, r, 2r, ..., cloned cache."""
    params = session.trainable_parameters()
    opt = torch.optim.Adam(params, lr=config.lr, eps=config.adam_eps)
    trajectory = []
    for text, count in zip(texts, counts, strict=True):
        enc = encode_for_training(session.tokenizer, text, config.max_length, config.pad_to)
        cache = None
        for j in range(count):
            if j % r == 0:
                opt.zero_grad(set_to_none=True)
                session.model(**enc).loss.backward()
                cache = [p.grad.clone() for p in params]
            else:
                for p, g in zip(params, cache, strict=True):
                    p.grad = g.clone()
            opt.step()
            trajectory.append([p.detach().clone() for p in params])
    return trajectory


def _twin_lora_sessions(tokenizer, lora: LoRAConfig | None = None):
    a = LoRASession(build_tiny_model(len(tokenizer)), tokenizer, lora or LoRAConfig())
    b = LoRASession(build_tiny_model(len(tokenizer)), tokenizer, lora or LoRAConfig())
    b.load_state_dict(a.state_dict())
    return a, b


# -- sessions ----------------------------------------------------------------------------------------


def test_lora_starts_bitwise_equal_to_base(tiny_model, tiny_tokenizer):
    base = _logits(tiny_model, tiny_tokenizer)
    session = LoRASession(tiny_model, tiny_tokenizer, LoRAConfig(r=4))
    assert torch.equal(_logits(session.model, tiny_tokenizer), base)
    names = session.named_trainable_parameters()
    assert names and all("lora_" in n for n in names)
    frozen = [n for n, p in session.model.named_parameters() if "lora_" not in n]
    assert frozen and all(not p.requires_grad for n, p in session.model.named_parameters() if n in frozen)
    assert not session.model.training


def test_training_changes_model_and_reset_restores_exactly_in_place(tiny_model, tiny_tokenizer):
    base = _logits(tiny_model, tiny_tokenizer)
    session = create_session(tiny_model, tiny_tokenizer, _cfg())
    assert isinstance(session, LoRASession)
    result = train_multiset(session, TEXTS, [3, 2, 1], _cfg())
    assert result.ok and result.stopped_reason is None
    trained = _logits(session.model, tiny_tokenizer)
    assert not torch.equal(trained, base)
    assert not session.model.training

    module_ids = {id(m) for m in session.model.modules()}
    param_ids = [id(p) for p in session.trainable_parameters()]
    t0 = time.perf_counter()
    session.reset()
    elapsed = time.perf_counter() - t0
    assert {id(m) for m in session.model.modules()} == module_ids
    assert [id(p) for p in session.trainable_parameters()] == param_ids
    assert torch.equal(_logits(session.model, tiny_tokenizer), base)
    assert all(p.grad is None for p in session.trainable_parameters())
    assert elapsed < 0.2  # in-place copy: well under a millisecond for the tiny model


def test_disabled_runs_the_base_model_and_keeps_the_adapter(tiny_model, tiny_tokenizer):
    base = _logits(tiny_model, tiny_tokenizer)
    session = LoRASession(tiny_model, tiny_tokenizer, LoRAConfig())
    train_multiset(session, TEXTS[:1], [2], _cfg())
    trained = _logits(session.model, tiny_tokenizer)
    with session.disabled() as model:
        assert torch.equal(_logits(model, tiny_tokenizer), base)
    assert torch.equal(_logits(session.model, tiny_tokenizer), trained)


def test_snapshot_load_round_trip(tiny_model, tiny_tokenizer, tmp_path: Path):
    session = LoRASession(tiny_model, tiny_tokenizer, LoRAConfig())
    train_multiset(session, TEXTS, [2, 1, 1], _cfg())
    trained = _logits(session.model, tiny_tokenizer)
    state = session.state_dict()
    assert all(t.device.type == "cpu" for t in state.values())
    path = session.snapshot(tmp_path / "adapters" / "task.safetensors")
    assert path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["task.safetensors"]  # no temp file left
    session.reset()
    assert not torch.equal(_logits(session.model, tiny_tokenizer), trained)
    session.load(path)
    assert torch.equal(_logits(session.model, tiny_tokenizer), trained)
    # the state dict is a detached copy: training further leaves it (and the file) unchanged
    train_multiset(session, TEXTS[:1], [1], _cfg())
    saved = load_file(str(path))
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[n], state[n]) for n in state)
    assert any(not torch.equal(state[n], p) for n, p in _params(session).items())


def test_load_rejects_mismatched_states(tiny_tokenizer, tmp_path: Path):
    session = LoRASession(build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, LoRAConfig(r=4))
    state = session.state_dict()
    renamed = {k + ".x": v for k, v in state.items()}
    with pytest.raises(ValueError, match="missing key"):
        session.load_state_dict(renamed)
    first = next(iter(state))
    with pytest.raises(ValueError, match="shape mismatch"):
        session.load_state_dict({**state, first: torch.zeros(3, 3)})
    other = LoRASession(build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, LoRAConfig(r=2))
    with pytest.raises(ValueError, match="shape"):
        session.load_state_dict(other.state_dict())
    full = FullSession(build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer)
    path = full.snapshot(tmp_path / "full.safetensors")
    with pytest.raises(ValueError, match="'full'"):
        session.load(path)
    with pytest.raises(FileNotFoundError):
        session.load(tmp_path / "absent.safetensors")


def test_unknown_target_modules_raise_a_clear_error(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match=r"c_attn.*q_proj") as info:
        LoRASession(tiny_model, tiny_tokenizer, LoRAConfig(target_modules=["q_proj", "c_attn"]))
    assert "'q_proj'" in str(info.value).split("linear modules")[1]
    assert "c_attn" in str(info.value).split("linear modules")[0]


def test_lora_layers_adapt_only_the_last_blocks(tiny_model, tiny_tokenizer):
    enc = encode_for_training(tiny_tokenizer, PROBE, max_length=48)
    with torch.no_grad():
        base = tiny_model(input_ids=enc["input_ids"], output_hidden_states=True)
    session = LoRASession(tiny_model, tiny_tokenizer, LoRAConfig(r=4, layers=1))
    names = list(session.named_trainable_parameters())
    assert names and all(".layers.1." in name for name in names)  # the tiny model has blocks 0 and 1
    assert train_multiset(session, TEXTS, [1, 1, 1], _cfg()).ok
    with torch.no_grad():
        after = session.model(input_ids=enc["input_ids"], output_hidden_states=True)
    assert torch.equal(base.hidden_states[1], after.hidden_states[1])  # block 0 computes as before
    assert not torch.equal(base.logits, after.logits)


def test_lora_layers_beyond_the_model_raise(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="lora.layers is 3 but the model has 2 transformer blocks"):
        LoRASession(tiny_model, tiny_tokenizer, LoRAConfig(layers=3))


def test_full_session_reset_and_disabled(tiny_model, tiny_tokenizer):
    base = _logits(tiny_model, tiny_tokenizer)
    session = create_session(tiny_model, tiny_tokenizer, _cfg(method="full", lr=1e-3))
    assert isinstance(session, FullSession)
    assert all(p.requires_grad for p in session.model.parameters())
    result = train_multiset(session, TEXTS, [2, 1, 1], _cfg(method="full", lr=1e-3))
    assert result.ok and result.steps == 4
    trained = _logits(session.model, tiny_tokenizer)
    assert not torch.equal(trained, base)
    with session.disabled():
        assert torch.equal(_logits(session.model, tiny_tokenizer), base)
    assert torch.equal(_logits(session.model, tiny_tokenizer), trained)
    module_ids = {id(m) for m in session.model.modules()}
    session.reset()
    assert {id(m) for m in session.model.modules()} == module_ids
    assert torch.equal(_logits(session.model, tiny_tokenizer), base)


# -- trainer -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [1, 2])
def test_trainer_matches_a_plain_reference_loop_step_by_step(tiny_tokenizer, monkeypatch, r):
    ours, ref = _twin_lora_sessions(tiny_tokenizer)
    counts = [3, 2, 1]
    config = _cfg(refresh_interval=r)
    recorder = _Recorder(monkeypatch)
    result = train_multiset(ours, TEXTS, counts, config)
    expected = _reference_training(ref, TEXTS, counts, config, r)
    assert result.steps == len(expected) == len(recorder.trajectory) == sum(counts)
    for step, (got, want) in enumerate(zip(recorder.trajectory, expected, strict=True)):
        for a, b in zip(got, want, strict=True):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), f"step {step}: max diff {(a - b).abs().max()}"


def test_gradient_reuse_changes_the_result_but_not_the_step_count(tiny_tokenizer, monkeypatch):
    plain, reuse = _twin_lora_sessions(tiny_tokenizer)
    counts = [4, 3]
    recorder = _Recorder(monkeypatch)
    r1 = train_multiset(plain, TEXTS[:2], counts, _cfg(refresh_interval=1))
    r2 = train_multiset(reuse, TEXTS[:2], counts, _cfg(refresh_interval=2))
    assert (r1.steps, r1.passes) == (7, 7)
    assert (r2.steps, r2.passes) == (7, 4)
    for opt in recorder.optimizers:
        steps = {float(state["step"]) for state in opt.state.values()}
        assert steps == {7.0}
    assert any(
        not torch.equal(a, b) for a, b in zip(recorder.trajectory[6], recorder.trajectory[13], strict=True)
    )
    a, b = _params(plain), _params(reuse)
    assert any(not torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize(
    ("counts", "r", "passes"),
    [([5, 3, 1], 2, 6), ([4], 3, 2), ([5, 3, 1], 1, 9), ([2, 0, 3], 2, 3), ([1, 1], 5, 2), ([6], 6, 1)],
)
def test_pass_count_is_sum_of_ceil(tiny_model, tiny_tokenizer, counts, r, passes):
    session = LoRASession(tiny_model, tiny_tokenizer, LoRAConfig(r=2))
    texts = ["alpha beta", "gamma delta", "fridge potato"][: len(counts)]
    result = train_multiset(session, texts, counts, _cfg(refresh_interval=r, max_length=8))
    assert result.passes == passes == sum(math.ceil(j / r) for j in counts)
    assert result.steps == sum(counts)
    assert len(result.losses) == len(result.pass_times) == passes
    assert all(math.isfinite(x) for x in result.losses) and all(t > 0 for t in result.pass_times)
    assert result.wall_time >= sum(result.pass_times)


def test_tokens_truncation_and_repeated_texts_tokenised_once(tiny_model, tiny_tokenizer, encode_calls):
    session = LoRASession(tiny_model, tiny_tokenizer, LoRAConfig(r=2))
    long_text = TEXTS[0] * 5
    result = train_multiset(session, [long_text, TEXTS[2], long_text], [1, 1, 1], _cfg(max_length=10))
    assert encode_calls == [long_text, TEXTS[2]]
    n2 = 1 + len(tiny_tokenizer(TEXTS[2], add_special_tokens=False)["input_ids"])
    assert result.tokens == 10 + min(n2, 10) + 10


def test_empty_multiset_does_nothing(tiny_model, tiny_tokenizer):
    session = LoRASession(tiny_model, tiny_tokenizer, LoRAConfig())
    before = _params(session)
    for texts, counts in (([], []), (TEXTS[:2], [0, 0])):
        result = train_multiset(session, texts, counts, _cfg())
        assert isinstance(result, TrainResult)
        assert (result.steps, result.passes, result.ok) == (0, 0, True)
    assert all(torch.equal(before[n], p) for n, p in _params(session).items())


def _nan_on_pass(model, n: int, exc: Exception | None = None):
    """Forward hook on lm_head: NaN logits (or raise `exc`) on the n-th forward call."""
    head = model.get_output_embeddings()
    seen = {"calls": 0}

    def hook(module, args, output):
        seen["calls"] += 1
        if seen["calls"] == n:
            if exc is not None:
                raise exc
            return output * float("nan")
        return output

    return head.register_forward_hook(hook)


def test_non_finite_loss_stops_and_resets(tiny_model, tiny_tokenizer):
    base = _logits(tiny_model, tiny_tokenizer)
    session = LoRASession(tiny_model, tiny_tokenizer, LoRAConfig())
    handle = _nan_on_pass(session.model, 3)
    try:
        result = train_multiset(session, TEXTS, [2, 2, 2], _cfg(refresh_interval=1))
    finally:
        handle.remove()
    assert result.ok is False
    assert result.stopped_reason == "non-finite loss at step 3"
    assert (result.steps, result.passes) == (2, 3)
    assert math.isnan(result.losses[-1])
    assert torch.equal(_logits(session.model, tiny_tokenizer), base)
    assert not session.model.training


def test_exception_mid_training_resets_and_reraises(tiny_model, tiny_tokenizer):
    base = _logits(tiny_model, tiny_tokenizer)
    session = LoRASession(tiny_model, tiny_tokenizer, LoRAConfig(dropout=0.1))
    handle = _nan_on_pass(session.model, 2, RuntimeError("boom"))
    try:
        with pytest.raises(RuntimeError, match="boom"):
            train_multiset(session, TEXTS, [1, 1, 1], _cfg())
    finally:
        handle.remove()
    assert torch.equal(_logits(session.model, tiny_tokenizer), base)
    assert all(p.grad is None for p in session.trainable_parameters())
    assert not session.model.training


def test_dropout_training_is_seeded_and_ends_in_eval(tiny_tokenizer):
    a, b = _twin_lora_sessions(tiny_tokenizer, LoRAConfig(dropout=0.3))
    assert a.uses_dropout
    ra = train_multiset(a, TEXTS, [2, 1, 1], _cfg(seed=7))
    rb = train_multiset(b, TEXTS, [2, 1, 1], _cfg(seed=7))
    assert ra.losses == rb.losses
    pa, pb = _params(a), _params(b)
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    assert not a.model.training


def test_padding_matches_unpadded_training(tiny_tokenizer):
    a, b = _twin_lora_sessions(tiny_tokenizer)
    ra = train_multiset(a, TEXTS, [2, 1, 1], _cfg())
    rb = train_multiset(b, TEXTS, [2, 1, 1], _cfg(pad_to=40))
    assert ra.tokens == rb.tokens
    assert torch.allclose(torch.tensor(ra.losses), torch.tensor(rb.losses), atol=1e-5)


@pytest.mark.parametrize(
    ("texts", "counts", "match"),
    [
        (TEXTS[:2], [1], "differ in length"),
        (TEXTS[:2], [1, -1], r"counts\[1\]"),
        (TEXTS[:2], [1, 1.5], r"counts\[1\]"),
        (TEXTS[:2], [True, 1], r"counts\[0\]"),
        (["ok", ""], [1, 1], r"texts\[1\]"),
        (["ok", None], [1, 1], r"texts\[1\]"),
        ("a string", [1] * 8, "not a single string"),
    ],
)
def test_bad_inputs_raise(tiny_model, tiny_tokenizer, texts, counts, match):
    session = LoRASession(tiny_model, tiny_tokenizer, LoRAConfig())
    before = _params(session)
    with pytest.raises(ValueError, match=match):
        train_multiset(session, texts, counts, _cfg())
    assert all(torch.equal(before[n], p) for n, p in _params(session).items())


# -- encoding ----------------------------------------------------------------------------------------


def test_encode_prepends_bos_and_truncates(tiny_tokenizer):
    ids = tiny_tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    enc = encode_for_training(tiny_tokenizer, TEXTS[0], max_length=200)
    assert enc["input_ids"][0].tolist() == [tiny_tokenizer.bos_token_id, *ids]
    assert torch.equal(enc["labels"], enc["input_ids"])
    assert enc["attention_mask"].all()
    short = encode_for_training(tiny_tokenizer, TEXTS[0], max_length=6)
    assert short["input_ids"].shape == (1, 6)
    assert short["input_ids"][0].tolist() == [tiny_tokenizer.bos_token_id, *ids[:5]]


def test_encode_pads_with_masked_labels(tiny_tokenizer):
    n = 1 + len(tiny_tokenizer(TEXTS[2], add_special_tokens=False)["input_ids"])
    enc = encode_for_training(tiny_tokenizer, TEXTS[2], max_length=100, pad_to=n + 5)
    assert enc["input_ids"].shape == enc["labels"].shape == enc["attention_mask"].shape == (1, n + 5)
    assert enc["input_ids"][0, n:].tolist() == [tiny_tokenizer.pad_token_id] * 5
    assert enc["attention_mask"][0].tolist() == [1] * n + [0] * 5
    assert enc["labels"][0, n:].tolist() == [-100] * 5
    assert torch.equal(enc["labels"][0, :n], enc["input_ids"][0, :n])
    cut = encode_for_training(tiny_tokenizer, TEXTS[2], max_length=100, pad_to=4)
    assert cut["input_ids"].shape == (1, 4) and cut["attention_mask"].all()
    both = encode_for_training(tiny_tokenizer, TEXTS[2], max_length=3, pad_to=6)
    assert both["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0]


def test_encode_falls_back_to_eos_and_rejects_tokenizers_without_either(tiny_tokenizer):
    class NoBos:
        bos_token_id = None
        eos_token_id = tiny_tokenizer.eos_token_id

        def __call__(self, text, add_special_tokens=False):
            return tiny_tokenizer(text, add_special_tokens=add_special_tokens)

    enc = encode_for_training(NoBos(), "hello", max_length=8)
    assert enc["input_ids"][0, 0].item() == tiny_tokenizer.eos_token_id

    class Bare:
        bos_token_id = eos_token_id = pad_token_id = None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [5, 6]}

    with pytest.raises(ValueError, match="neither a BOS nor an EOS"):
        encode_for_training(Bare(), "hello", max_length=8)
    with pytest.raises(ValueError, match="max_length"):
        encode_for_training(tiny_tokenizer, "hello", max_length=1)
