"""Completion instances (prompt -> answer, the loss on the answer only) in the encoder and the trainer."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model

from hullft_agent.config import FinetuneConfig, LoRAConfig
from hullft_agent.errors import ContextOverflowError, HullFTError
from hullft_agent.finetune import Completion, LoRASession, encode_for_training, train_multiset

TEXT = "The agent opens the fridge and takes the yellow potato."


def _prompt(tokenizer, content: str = "You are in a kitchen. There is a closed fridge here.") -> str:
    """A prompt rendered the way the runtime renders one: chat template plus generation prompt."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _cfg(**kwargs) -> FinetuneConfig:
    kwargs.setdefault("lr", 1e-2)
    kwargs.setdefault("max_length", 60)
    return FinetuneConfig(**kwargs)


def _logits(model, tokenizer) -> torch.Tensor:
    enc = encode_for_training(tokenizer, TEXT, max_length=48)
    with torch.no_grad():
        return model(input_ids=enc["input_ids"]).logits.clone()


def _params(session) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in session.named_trainable_parameters().items()}


def _hand_ids(tokenizer, completion: Completion) -> tuple[list[int], int]:
    """BOS + prompt (without its own leading BOS) + answer + EOS, and the context length, built by hand."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    prompt = _ids(tokenizer, completion.prompt)
    assert prompt[0] == bos  # the chat template opens with <|im_start|>, the tiny tokenizer's BOS
    return [bos, *prompt[1:], *_ids(tokenizer, completion.answer), eos], len(prompt)


def _answer_nll(model, ids: list[int], n_context: int) -> torch.Tensor:
    """Mean NLL of the tokens from position n_context on, each predicted from the tokens before it."""
    logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    nll = -torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return nll[n_context - 1 :].mean()


# -- the type ----------------------------------------------------------------------------------------


def test_completion_is_a_validated_frozen_value():
    c = Completion("prompt", "go north")
    assert c == Completion("prompt", "go north") and hash(c) == hash(Completion("prompt", "go north"))
    assert Completion("", "go north").prompt == ""  # no context is allowed: the answer follows BOS
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.answer = "go south"  # type: ignore[misc]
    for blank in ("", "  \n"):
        with pytest.raises(ValueError, match="answer must contain text"):
            Completion("prompt", blank)
    with pytest.raises(TypeError, match="Completion.prompt must be a string, got NoneType"):
        Completion(None, "go north")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Completion.answer must be a string, got int"):
        Completion("prompt", 3)  # type: ignore[arg-type]


# -- encoding ----------------------------------------------------------------------------------------


def test_encode_masks_bos_and_prompt_and_ends_the_answer_with_eos(tiny_tokenizer):
    completion = Completion(_prompt(tiny_tokenizer), "go north")
    expected, n_context = _hand_ids(tiny_tokenizer, completion)
    enc = encode_for_training(tiny_tokenizer, completion, max_length=60)
    ids = enc["input_ids"][0].tolist()
    assert ids == expected
    assert ids.count(tiny_tokenizer.bos_token_id) == 2  # the template's BOS, and the user turn's opener
    assert ids[:2] != [tiny_tokenizer.bos_token_id] * 2  # BOS not doubled
    labels = enc["labels"][0].tolist()
    assert labels[:n_context] == [-100] * n_context
    assert labels[n_context:] == ids[n_context:] and -100 not in labels[n_context:]
    assert enc["attention_mask"].all()

    unmasked = encode_for_training(tiny_tokenizer, completion, max_length=60, mask_prompt=False)
    assert torch.equal(unmasked["input_ids"], enc["input_ids"])
    assert torch.equal(unmasked["labels"], enc["input_ids"])


def test_encode_prepends_bos_to_a_plain_prompt_and_never_doubles_eos(tiny_tokenizer):
    bos, eos = tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id
    plain = encode_for_training(tiny_tokenizer, Completion("> look\n", "go north"), max_length=60)
    prompt, answer = _ids(tiny_tokenizer, "> look\n"), _ids(tiny_tokenizer, "go north")
    assert plain["input_ids"][0].tolist() == [bos, *prompt, *answer, eos]
    assert plain["labels"][0].tolist() == [-100] * (1 + len(prompt)) + [*answer, eos]

    bare = encode_for_training(tiny_tokenizer, Completion("", "go north"), max_length=60)
    assert bare["input_ids"][0].tolist() == [bos, *answer, eos]
    assert bare["labels"][0].tolist() == [-100, *answer, eos]

    ended = encode_for_training(tiny_tokenizer, Completion("> look\n", "go north<|im_end|>"), max_length=60)
    assert torch.equal(ended["input_ids"], plain["input_ids"])


def test_encode_cuts_the_oldest_prompt_tokens_and_keeps_the_answer(tiny_tokenizer):
    bos, eos = tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id
    completion = Completion(
        _prompt(tiny_tokenizer, "There is a stove, a counter and a fridge. " * 3), "take potato"
    )
    prompt = _ids(tiny_tokenizer, completion.prompt)[1:]
    answer = [*_ids(tiny_tokenizer, completion.answer), eos]
    assert len(prompt) > 20

    enc = encode_for_training(tiny_tokenizer, completion, max_length=20)
    kept = 20 - 1 - len(answer)
    assert enc["input_ids"][0].tolist() == [bos, *prompt[-kept:], *answer]
    assert enc["labels"][0].tolist() == [-100] * (1 + kept) + answer

    padded = encode_for_training(tiny_tokenizer, completion, max_length=60, pad_to=20 + 4)
    assert padded["input_ids"].shape == (1, 24)
    assert padded["attention_mask"][0].tolist() == [1] * 24  # pad_to also caps the length: nothing to pad
    padded = encode_for_training(tiny_tokenizer, completion, max_length=20, pad_to=24)
    assert padded["input_ids"][0, :20].tolist() == enc["input_ids"][0].tolist()
    assert padded["labels"][0].tolist() == enc["labels"][0].tolist() + [-100] * 4
    assert padded["attention_mask"][0].tolist() == [1] * 20 + [0] * 4

    exact = encode_for_training(tiny_tokenizer, completion, max_length=1 + len(answer))
    assert exact["input_ids"][0].tolist() == [bos, *answer]  # the whole prompt dropped, answer whole
    with pytest.raises(
        ContextOverflowError, match=rf"takes {len(answer)} tokens .* only {len(answer) - 1} fit"
    ):
        encode_for_training(tiny_tokenizer, completion, max_length=len(answer))
    with pytest.raises(ValueError, match=r"max_length=60, pad_to=4"):
        encode_for_training(tiny_tokenizer, completion, max_length=60, pad_to=4)


# -- training ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_prompt", [True, False])
def test_reported_loss_is_the_mean_nll_of_the_answer_tokens(tiny_model, tiny_tokenizer, mask_prompt):
    completion = Completion(_prompt(tiny_tokenizer), "take the yellow potato")
    ids, n_context = _hand_ids(tiny_tokenizer, completion)
    with torch.no_grad():
        answer_only = _answer_nll(tiny_model, ids, n_context).item()
        every_token = _answer_nll(tiny_model, ids, 1).item()
    assert abs(answer_only - every_token) > 1e-3  # the mask must make a measurable difference
    session = LoRASession(tiny_model, tiny_tokenizer, LoRAConfig())
    result = train_multiset(session, [completion], [1], _cfg(mask_prompt=mask_prompt))
    assert result.ok and result.tokens == len(ids)
    if mask_prompt:
        assert result.losses[0] == pytest.approx(answer_only, rel=1e-5)
        assert result.loss_tokens == len(ids) - n_context == len(_ids(tiny_tokenizer, completion.answer)) + 1
    else:
        assert result.losses[0] == pytest.approx(every_token, rel=1e-5)
        assert result.loss_tokens == len(ids) - 1


def test_training_follows_the_gradient_of_the_answer_nll_only(tiny_tokenizer):
    """Trainer (gradient reuse r=2) against a loop whose loss is the hand-written answer NLL."""
    ours = LoRASession(build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, LoRAConfig())
    ref = LoRASession(build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, LoRAConfig())
    ref.load_state_dict(ours.state_dict())
    completions = [
        Completion(_prompt(tiny_tokenizer), "open fridge"),
        Completion(_prompt(tiny_tokenizer, "> go north\nYou enter the pantry."), "take salt"),
    ]
    counts, config = [3, 2], _cfg(refresh_interval=2)
    result = train_multiset(ours, completions, counts, config)

    params = ref.trainable_parameters()
    opt = torch.optim.Adam(params, lr=config.lr, eps=config.adam_eps)
    losses = []
    for completion, count in zip(completions, counts, strict=True):
        ids, n_context = _hand_ids(tiny_tokenizer, completion)
        for j in range(count):
            if j % 2 == 0:
                opt.zero_grad(set_to_none=True)
                loss = _answer_nll(ref.model, ids, n_context)
                loss.backward()
                losses.append(loss.item())
                cache = [p.grad.clone() for p in params]
            else:
                for p, g in zip(params, cache, strict=True):
                    p.grad = g.clone()
            opt.step()

    assert (result.steps, result.passes) == (5, 3)
    assert result.losses == pytest.approx(losses, rel=1e-5)
    mine, theirs = _params(ours), _params(ref)
    for name in mine:
        # Adam divides by sqrt(v): rounding of near-zero gradient entries shows up at ~1e-6, while a
        # wrong mask moves parameters by ~lr (1e-2) per step
        assert torch.allclose(mine[name], theirs[name], rtol=0, atol=1e-5), name


def test_texts_and_completions_mix_with_the_same_reuse_and_tokenise_once(
    tiny_model, tiny_tokenizer, encode_calls
):
    session = LoRASession(tiny_model, tiny_tokenizer, LoRAConfig(r=2))
    completion = Completion(_prompt(tiny_tokenizer), "open fridge")
    steps: list[int] = []
    items = [completion, TEXT, Completion(completion.prompt, completion.answer)]
    result = train_multiset(session, items, [5, 3, 1], _cfg(refresh_interval=2), on_step=steps.append)
    texts_only = train_multiset(session, [TEXT, "gamma delta", "fridge"], [5, 3, 1], _cfg(refresh_interval=2))
    assert result.passes == texts_only.passes == 6 and result.steps == texts_only.steps == 9
    assert steps == list(range(1, 10))
    assert encode_calls[:2] == [completion, TEXT]
    assert len(encode_calls) == 2 + 3  # the equal completion reused its encoding

    ids, n_context = _hand_ids(tiny_tokenizer, completion)
    n_text = 1 + len(_ids(tiny_tokenizer, TEXT))
    passes = {"completion": 3 + 1, "text": 2}  # ceil(5/2) + ceil(1/2), ceil(3/2)
    assert result.tokens == passes["completion"] * len(ids) + passes["text"] * n_text
    assert result.loss_tokens == passes["completion"] * (len(ids) - n_context) + passes["text"] * (n_text - 1)


def test_lora_reset_and_snapshot_stay_exact_after_completion_training(
    tiny_model, tiny_tokenizer, tmp_path: Path
):
    base = _logits(tiny_model, tiny_tokenizer)
    session = LoRASession(tiny_model, tiny_tokenizer, LoRAConfig())
    result = train_multiset(
        session, [Completion(_prompt(tiny_tokenizer), "open fridge"), TEXT], [3, 1], _cfg()
    )
    assert result.ok
    trained = _logits(session.model, tiny_tokenizer)
    assert not torch.equal(trained, base)
    path = session.snapshot(tmp_path / "task.safetensors")
    session.reset()
    assert torch.equal(_logits(session.model, tiny_tokenizer), base)
    session.load(path)
    assert torch.equal(_logits(session.model, tiny_tokenizer), trained)


def test_an_answer_that_cannot_fit_stops_before_any_step(tiny_model, tiny_tokenizer):
    session = LoRASession(tiny_model, tiny_tokenizer, LoRAConfig())
    before = _params(session)
    items = [TEXT, Completion("> look\n", "take the yellow potato from the fridge")]
    with pytest.raises(HullFTError, match="takes .* tokens"):
        train_multiset(session, items, [2, 1], _cfg(max_length=6))
    assert all(torch.equal(before[n], p) for n, p in _params(session).items())
    with pytest.raises(ValueError, match="not a single string or Completion"):
        train_multiset(session, Completion("a", "b"), [1], _cfg())  # type: ignore[arg-type]


def test_non_finite_loss_on_a_completion_stops_and_resets(tiny_model, tiny_tokenizer):
    base = _logits(tiny_model, tiny_tokenizer)
    session = LoRASession(tiny_model, tiny_tokenizer, LoRAConfig())
    calls = {"n": 0}

    def nan_on_second(module, args, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 2 else output

    handle = session.model.get_output_embeddings().register_forward_hook(nan_on_second)
    completion = Completion(_prompt(tiny_tokenizer), "open fridge")
    try:
        result = train_multiset(session, [completion, TEXT], [1, 1], _cfg())
    finally:
        handle.remove()
    ids, n_context = _hand_ids(tiny_tokenizer, completion)
    assert (result.ok, result.steps, result.passes) == (False, 1, 2)
    assert result.stopped_reason == "non-finite loss at step 2" and math.isnan(result.losses[-1])
    assert (result.tokens, result.loss_tokens) == (len(ids), len(ids) - n_context)
    assert torch.equal(_logits(session.model, tiny_tokenizer), base)


def test_lora_initialisation_is_seeded_and_leaves_the_callers_rng_alone(tiny_tokenizer):
    from conftest import build_tiny_model

    from hullft_agent.finetune import create_session

    def a_matrices(rng_state: int, seed: int) -> torch.Tensor:
        model = build_tiny_model(len(tiny_tokenizer))
        torch.manual_seed(rng_state)  # whatever the caller's RNG holds
        session = create_session(model, tiny_tokenizer, _cfg(seed=seed))
        return torch.cat([p.detach().flatten() for n, p in session.model.named_parameters() if "lora_A" in n])

    assert torch.equal(a_matrices(1, 0), a_matrices(2, 0)), "the same seed gives the same adapter in any RNG state"
    assert not torch.equal(a_matrices(1, 0), a_matrices(1, 1))
    model = build_tiny_model(len(tiny_tokenizer))
    torch.manual_seed(5)
    create_session(model, tiny_tokenizer, _cfg(seed=0))
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(1)), "creating a session does not move the caller's RNG"
