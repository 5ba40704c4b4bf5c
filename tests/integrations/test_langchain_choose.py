"""`ChatHullFT.choose`: one of given answers by log-likelihood (or generated and matched), through the
chat model's adapt → score → restore → log path, on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_hullft import get_adaptation_report, match_answer
from langchain_hullft._messages import to_conversation
from test_langchain_helpers import TOKENIZER, adapter_config, make_chat, make_memory

from hullft_agent.runtime.prompt import prompt_ids

MESSAGES = [SystemMessage("play the game"), HumanMessage("You are in a kitchen. There is a closed fridge.")]
CHOICES = ["open fridge", "take knife from table", "go north", "examine cookbook", "eat meal", "look"]


def plain_chat():
    return make_chat(None, adapter=False, temperature=0.0, max_tokens=8, max_positions=4096)


def direct_logprobs(model, prompt: list[int], continuation: list[int]) -> list[float]:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + continuation])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return [float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(continuation)]


@pytest.mark.parametrize("scoring", ["sum", "mean"])
def test_choose_picks_the_most_likely_command_as_a_direct_computation_does(scoring):
    chat = plain_chat()
    result = chat.choose(MESSAGES, CHOICES, scoring=scoring, log=False)
    prompt = prompt_ids(chat.runtime().tokenizer, to_conversation(MESSAGES))
    eos = TOKENIZER.eos_token_id
    direct = [direct_logprobs(chat.llm, prompt, TOKENIZER(c, add_special_tokens=False)["input_ids"] + [eos])
              for c in CHOICES]
    for got, want in zip(result.token_logprobs, direct, strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    scores = [sum(d) if scoring == "sum" else sum(d) / len(d) for d in direct]
    best = max(range(len(CHOICES)), key=scores.__getitem__)
    assert result.index == best and result.text == CHOICES[best] and result.message.content == CHOICES[best]
    assert result.scores == pytest.approx(scores, abs=1e-4)
    text_lp = sum(direct[best][:-1])  # BPB counts the command's own tokens, not the end-of-turn token
    assert result.bpb() == pytest.approx(-text_lp / (math.log(2) * len(CHOICES[best].encode())), rel=1e-4)


def test_choose_scores_all_commands_in_two_forward_passes():
    chat = plain_chat()
    calls = []
    handle = chat.llm.register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
    choices = [f"take item {i} from the fridge" for i in range(30)]
    chat.choose(MESSAGES, choices, log=False)
    handle.remove()
    assert len(calls) == 2  # the prompt once, then all 30 commands packed into one sequence


def test_choose_adapts_logs_and_restores_like_a_normal_call(tmp_path):
    memory = make_memory(tmp_path / "memory")
    chat = make_chat(memory, config=adapter_config(), temperature=0.0, max_tokens=8, max_positions=4096)
    probe = torch.tensor([TOKENIZER("open fridge")["input_ids"]])
    with torch.no_grad():
        base = chat.adapter.model(probe).logits
    version = memory.version
    result = chat.choose(MESSAGES, CHOICES, task="a", episode_id="ep-1", log_metadata={"policy": "agent"})
    report = get_adaptation_report(result.message)
    assert report is not None and report.adapted and result.report.selected_ids == report.selected_ids
    assert {"prompt", "adapt", "score", "log"} <= set(result.message.response_metadata["hullft"]["timings"])
    assert result.message.response_metadata["choice"]["text"] == result.text
    assert memory.version == version + 1  # the observation and the command: one commit
    rows = sorted(memory.get(result.message.response_metadata["hullft"]["logged_ids"]), key=lambda r: r["step"])
    assert [r["kind"] for r in rows] == ["observation", "action"]
    assert rows[0]["text"] == MESSAGES[-1].content and rows[-1]["text"] == result.text
    assert rows[-1]["metadata"]["policy"] == "agent" and rows[-1]["metadata"]["chosen_by"] == "loglik"
    with torch.no_grad():
        assert torch.equal(base, chat.adapter.model(probe).logits)  # per_query: base model restored


def test_choose_rejects_bad_choices_before_the_model_runs():
    chat = plain_chat()
    with pytest.raises(ValueError, match="choices is empty"):
        chat.choose(MESSAGES, [])
    with pytest.raises(ValueError, match="repeats"):
        chat.choose(MESSAGES, ["look", "look"])
    with pytest.raises(TypeError, match="list of strings"):
        chat.choose(MESSAGES, "look")
    with pytest.raises(ValueError, match="scoring"):
        chat.choose(MESSAGES, ["look"], scoring="max")


def test_generated_answer_that_names_no_command_falls_back_to_the_best_scored(caplog):
    chat = plain_chat()
    scored = chat.choose(MESSAGES, CHOICES, log=False)
    result = chat.choose(MESSAGES, CHOICES, strategy="generate", log=False)
    assert result.generated is not None and result.matched is False
    assert "names none of the" in result.no_match and "names none of the" in caplog.text
    assert result.text == scored.text  # the fallback is the log-likelihood choice


def test_match_answer():
    assert match_answer("Open fridge.", CHOICES) == 0
    assert match_answer("> take knife from table and then go", CHOICES) == 1
    assert match_answer("examine the cookbook", CHOICES) == 3  # close enough
    assert match_answer("I would like to dance", CHOICES) is None
    assert match_answer("", CHOICES) is None


def test_choice_temperature_draws_from_the_scores_softmax_reproducibly():
    chat = plain_chat()
    greedy = chat.choose(MESSAGES, CHOICES, log=False)
    probs = torch.softmax(torch.tensor(greedy.scores, dtype=torch.float64) / 2.0, dim=0)
    draws = [chat.choose(MESSAGES, CHOICES, log=False, choice_temperature=2.0, seed=s).index for s in range(150)]
    freq = torch.bincount(torch.tensor(draws), minlength=len(CHOICES)).double() / len(draws)
    assert float((freq - probs).abs().max()) < 0.12
    assert chat.choose(MESSAGES, CHOICES, log=False, choice_temperature=2.0, seed=7).index == draws[7]
    with pytest.raises(ValueError, match="choice_temperature"):
        chat.choose(MESSAGES, CHOICES, choice_temperature=-1)
