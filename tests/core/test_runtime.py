"""The core runtime from a plain Python loop: no LangChain, the same adapt → act → restore → log path."""

from __future__ import annotations

import pytest
import torch

from hullft_agent.adapter import TestTimeAdapter
from hullft_agent.config import AdapterConfig, FinetuneConfig, LearnFrom, LoRAConfig, SelectionConfig
from hullft_agent.errors import InvalidStepError
from hullft_agent.memory import TrajectoryMemory
from hullft_agent.memory.testing import HashingEmbedder
from hullft_agent.runtime import Call, Runtime, SamplingParams

SYSTEM = {"role": "system", "content": "Answer with one command."}


@pytest.fixture()
def memory(tmp_path):
    memory = TrajectoryMemory.open(tmp_path / "mem", embedder=HashingEmbedder(32))
    memory.log_episode("e1", [("observation", "the kitchen has a closed fridge"), ("action", "open the fridge")],
                       task="cook")
    memory.log_episode("e2", [("observation", "a knife lies on the counter"), ("action", "slice the potato")],
                       task="cook")
    return memory


def runtime(model, tokenizer, memory, **kwargs) -> Runtime:
    config = AdapterConfig(selection=SelectionConfig(n=3, k=10),
                           finetune=FinetuneConfig(lr=5e-2, max_length=64, lora=LoRAConfig(r=4, alpha=8)))
    adapter = TestTimeAdapter(model, tokenizer, embedder=memory.embedder, source=memory, config=config)
    return Runtime(adapter=adapter, memory=memory, **kwargs)


def logits(rt: Runtime) -> torch.Tensor:
    ids = rt.tokenizer("open the fridge", return_tensors="pt").input_ids
    with torch.no_grad():
        return rt.model(ids).logits


def call(text: str, **kwargs) -> Call:
    return Call(conversation=[SYSTEM, {"role": "user", "content": text}], context=text,
                sampling=SamplingParams(max_new_tokens=6, temperature=0.0), **kwargs)


def test_generate_adapts_answers_restores_and_logs(tiny_model, tiny_tokenizer, memory):
    rt = runtime(tiny_model, tiny_tokenizer, memory)
    base = logits(rt)
    result = rt.generate(call("the fridge is closed", task="cook", episode_id="run-1"))
    assert result.report.adapted and result.report.steps == 3
    assert result.text and result.stats.output_tokens > 0 and result.usage()["input_tokens"] == result.prompt_tokens
    assert torch.equal(base, logits(rt)), "per_query: the base model answers the next call"
    rows = memory.get(result.logged_ids)
    assert [r["kind"] for r in rows] == ["observation", "action"]
    assert rows[1]["metadata"]["selected_ids"] == result.report.selected_ids


def test_choose_logs_a_decision_row_that_later_calls_learn_from(tiny_model, tiny_tokenizer, memory):
    rt = runtime(tiny_model, tiny_tokenizer, memory, log_decisions=True)
    result = rt.choose(call("the fridge is closed", task="cook", episode_id="run-2", actor="expert"),
                       ["open the fridge", "go west"])
    rows = {r["kind"]: r for r in memory.get(result.call.logged_ids)}
    decision = rows["decision"]
    assert decision["text"] == "the fridge is closed" and decision["metadata"]["answer"] == result.text
    assert decision["metadata"]["actor"] == "expert" and decision["metadata"]["prompt"][0] == SYSTEM
    memory.finish_episode("run-2", outcome="won")
    learned = rt.generate(call("the fridge is closed", overrides={"learn_from": LearnFrom(outcomes=["won"], kinds=["decision"])}))
    assert learned.report.selected_ids == [decision["id"]] and learned.report.decisions == 1


def test_a_prompt_format_answers_and_logs_the_trimmed_prompt(tiny_model, tiny_tokenizer, memory):
    whole = [SYSTEM, {"role": "user", "content": "a kitchen"}, {"role": "assistant", "content": "look"},
             {"role": "user", "content": "the fridge is closed"}, {"role": "system", "content": "open; west"}]
    trimmed = [{"role": "user", "content": "the fridge is closed"}]  # nosys-h0: no system turns, no history
    rt = runtime(tiny_model, tiny_tokenizer, memory, log_decisions=True, prompt_format="nosys-h0")
    assert rt.answered_prompt(whole) == trimmed

    def ask(runtime_: Runtime, conversation: list[dict[str, str]]):
        return runtime_.choose(Call(conversation=conversation, context="the fridge is closed", adapt=False),
                               ["open the fridge", "go west"])

    answered, plain = ask(rt, whole), ask(Runtime(adapter=rt.adapter), trimmed)
    assert answered.scores == plain.scores and answered.call.prompt_tokens == plain.call.prompt_tokens
    assert answered.call.prompt_tokens < ask(Runtime(adapter=rt.adapter), whole).call.prompt_tokens
    decision = next(r for r in memory.get(answered.call.logged_ids) if r["kind"] == "decision")
    assert decision["metadata"]["prompt"] == trimmed, "the decision row keeps the prompt the model answered"


def test_bad_prompt_formats_are_refused(tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="unknown decision format 'short'.*nosys-h1"):
        Runtime(tiny_model, tiny_tokenizer, prompt_format="short")
    rt = Runtime(tiny_model, tiny_tokenizer, prompt_format="nosys")
    with pytest.raises(ValueError, match="leaves no message"):
        rt.generate(Call(conversation=[SYSTEM], context="x", adapt=False, log=False))


def test_adapt_false_and_failures_answer_with_the_base_model(tiny_model, tiny_tokenizer, memory, monkeypatch):
    rt = runtime(tiny_model, tiny_tokenizer, memory)
    off = rt.generate(call("the fridge is closed", adapt=False, log=False))
    assert off.report.skipped and "adapt=False" in off.report.skip_reason

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(rt.adapter, "adapt", broken)
    failed = rt.generate(call("the fridge is closed", log=False))
    assert failed.report.skipped and "disk full" in failed.report.skip_reason and failed.text == off.text


def test_bad_calls_are_refused_before_the_model_runs(tiny_model, tiny_tokenizer, memory):
    with pytest.raises(ValueError, match="conversation"):
        Call(conversation=[])
    with pytest.raises(ValueError, match="conversation\\[0\\]"):
        Call(conversation=[{"role": "user"}])
    with pytest.raises(InvalidStepError, match="actor"):
        call("x", actor="Not An Actor")
    with pytest.raises(ValueError, match="n"):
        call("x", overrides={"n": 0})
    with pytest.raises(ValueError, match="a Runtime needs"):
        Runtime(tokenizer=tiny_tokenizer)


def test_learn_from_filters_a_trajectory_memory_by_outcome_reward_and_actor(tmp_path):
    from hullft_agent.decisions import decision_step

    memory = TrajectoryMemory.open(tmp_path / "decisions", embedder=HashingEmbedder(32), granularity="window",
                                   window=3)
    steps = [("observation", "a closed fridge"),
             decision_step("a closed fridge", [{"role": "user", "content": "a closed fridge"}], "open fridge",
                           actor="expert", reward=1.0),
             ("action", "open fridge"), ("observation", "a potato inside")]
    memory.log_episode("won-1", steps, outcome="won")
    memory.log_episode("lost-1", [decision_step("a closed fridge", "prompt text", "go west", reward=0.0)],
                       outcome="lost")
    query = memory.embedder.encode("a closed fridge")
    every = memory.candidates(query, 10)
    windows = [m for m in memory.get(every.ids) if m["kind"] == "window"]
    assert all("open fridge" in w["text"] or "closed fridge" in w["text"] for w in windows)
    assert all("decision" not in w["text"] for w in windows), "decisions are never part of a transcript"
    assert len(windows) == 3 and windows[-1]["text"].count("\n") == 2, "a window still holds 3 real steps"
    won = memory.candidates(query, 10, learn_from=LearnFrom(kinds=["decision"], outcomes=["won"]))
    assert [m["metadata"]["answer"] for m in won.metadata] == ["open fridge"]
    assert won.metadata[0]["reward"] == 1.0 and won.metadata[0]["kind"] == "decision"
    assert len(memory.candidates(query, 10, learn_from=LearnFrom(min_reward=0.5))) == 1
    agents = memory.candidates(query, 10, learn_from=LearnFrom(actors=["agent"]))
    assert [m["metadata"]["answer"] for m in agents.metadata] == ["go west"]
    narrowed = memory.candidates(query, 10, learn_from=LearnFrom(kinds=["decision"], where="reward < 0.5"))
    assert [m["metadata"]["answer"] for m in narrowed.metadata] == ["go west"]
