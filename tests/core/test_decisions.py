"""Decision rows: validation, training prompts, outcome filters, and adaptation on prompt -> answer."""

from __future__ import annotations

import pytest
import torch

from hullft_agent.adapter import TestTimeAdapter
from hullft_agent.candidates import InMemoryCandidates
from hullft_agent.config import (
    AdapterConfig,
    DecisionFormat,
    FinetuneConfig,
    LearnFrom,
    LoRAConfig,
    SelectionConfig,
)
from hullft_agent.decisions import decision_instance, decision_step, trim_prompt
from hullft_agent.errors import InvalidStepError
from hullft_agent.finetune import Completion
from hullft_agent.memory.testing import HashingEmbedder
from hullft_agent.runtime.prompt import render_prompt

SYSTEM = {"role": "system", "content": "You play a cooking game. Answer with one command."}


def prompt(observation: str, history: tuple[str, ...] = ()) -> list[dict[str, str]]:
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(history)]
    return [SYSTEM, *turns, {"role": "user", "content": observation}]


STATES = [
    ("You are in a kitchen. The fridge is closed.", "open fridge", "won", 0.0, "expert"),
    ("The fridge is open. A yellow potato is inside.", "take yellow potato", "won", 1.0, "expert"),
    ("You hold a yellow potato. There is a stove.", "cook yellow potato with stove", "won", 1.0, "agent"),
    ("You are in a kitchen. The fridge is closed.", "go west", "lost", 0.0, "agent"),
    ("The fridge is open. A yellow potato is inside.", "eat potato", "lost", -1.0, "explorer"),
]


def decision_pool() -> InMemoryCandidates:
    steps = [decision_step(s, prompt(s), a, actor=actor, reward=r) for s, a, _, r, actor in STATES]
    rows = [{"kind": st["kind"], "reward": st["reward"], "outcome": o, "metadata": st["metadata"]}
            for st, (_, _, o, _, _) in zip(steps, STATES, strict=True)]
    return InMemoryCandidates([st["text"] for st in steps], embedder=HashingEmbedder(32), rows=rows,
                              ids=[f"d{i}" for i in range(len(steps))], episodes=["w", "w", "w", "l", "l"])


def config(**kwargs) -> AdapterConfig:
    kwargs.setdefault("selection", SelectionConfig(n=4, k=10))
    return AdapterConfig(finetune=FinetuneConfig(lr=2e-2, max_length=96, lora=LoRAConfig(r=4, alpha=8)), **kwargs)


def answer_logprob(adapter: TestTimeAdapter, messages: list[dict[str, str]], answer: str) -> float:
    tok = adapter.tokenizer
    p = tok(render_prompt(tok, messages), add_special_tokens=False)["input_ids"]
    a = tok(answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + a])
    with torch.no_grad():
        logp = torch.log_softmax(adapter.model(ids).logits[0, :-1].float(), dim=-1)
    return float(sum(logp[len(p) - 1 + i, t] for i, t in enumerate(a)))


def test_a_decision_step_is_validated():
    step = decision_step("state", prompt("state"), "open fridge", actor="expert", reward=1.0, metadata={"game": 3})
    assert step["kind"] == "decision" and step["text"] == "state" and step["reward"] == 1.0
    assert step["metadata"] == {"game": 3, "prompt": prompt("state"), "answer": "open fridge", "actor": "expert"}
    with pytest.raises(InvalidStepError, match="answer"):
        decision_step("state", prompt("state"), "  ")
    with pytest.raises(InvalidStepError, match="state"):
        decision_step("", prompt("state"), "go")
    with pytest.raises(InvalidStepError, match="actor"):
        decision_step("state", prompt("state"), "go", actor="The Expert")
    with pytest.raises(InvalidStepError, match="prompt\\[0\\]"):
        decision_step("state", [{"role": "user"}], "go")
    with pytest.raises(InvalidStepError, match="reserved"):
        decision_step("state", "a prompt", "go", metadata={"answer": "x"})


def test_training_prompts_can_drop_the_system_prompt_and_old_turns():
    messages = prompt("now", ("o1", "a1", "o2", "a2"))
    assert trim_prompt(messages, DecisionFormat()) == messages
    assert trim_prompt(messages, DecisionFormat(system=False, history=2)) == messages[-3:]
    assert trim_prompt(messages, DecisionFormat(history=0)) == [SYSTEM, messages[-1]]


def test_a_decision_trains_as_its_rendered_prompt_and_answer(tiny_tokenizer):
    meta = {"kind": "decision", "metadata": decision_step("s", prompt("s"), "go")["metadata"]}
    instance = decision_instance(meta, tiny_tokenizer, DecisionFormat(system=False))
    assert instance == Completion(render_prompt(tiny_tokenizer, [prompt("s")[-1]]), "go")
    assert instance.prompt.endswith("<|im_start|>assistant\n")


def test_learn_from_keeps_only_what_worked():
    pool = decision_pool()
    query = HashingEmbedder(32).encode("The fridge is open")
    won = pool.candidates(query, 10, learn_from=LearnFrom(outcomes=["won"]))
    assert sorted(won.ids) == ["d0", "d1", "d2"]
    rewarded = pool.candidates(query, 10, learn_from=LearnFrom(min_reward=0.5))
    assert sorted(rewarded.ids) == ["d1", "d2"]
    experts = pool.candidates(query, 10, learn_from=LearnFrom(actors=["expert"], outcomes=["won"]))
    assert sorted(experts.ids) == ["d0", "d1"]
    with pytest.raises(ValueError, match="actor"):
        LearnFrom(actors=["Expert!"])
    with pytest.raises(ValueError, match="where"):
        pool.candidates(query, 10, learn_from=LearnFrom(where="reward > 0"))


def test_adapting_on_decisions_raises_the_answer_and_trains_on_nothing_else(tiny_model, tiny_tokenizer):
    pool = decision_pool()
    adapter = TestTimeAdapter(tiny_model, tiny_tokenizer, embedder=HashingEmbedder(32), source=pool,
                              config=config(learn_from=LearnFrom(outcomes=["won"])))
    state = "The fridge is open. A yellow potato is inside."
    before_good = answer_logprob(adapter, prompt(state), "take yellow potato")
    before_bad = answer_logprob(adapter, prompt(state), "go west")
    with adapter.adapted(state) as report:
        assert set(report.selected_ids) <= {"d0", "d1", "d2"} and report.decisions == len(report.selected_ids)
        gain_good = answer_logprob(adapter, prompt(state), "take yellow potato") - before_good
        gain_bad = answer_logprob(adapter, prompt(state), "go west") - before_bad
    assert gain_good > 1.0 and gain_good > gain_bad + 1.0


def test_text_rows_keep_whole_text_training(tiny_model, tiny_tokenizer):
    pool = InMemoryCandidates(["open the fridge", "take the potato"], embedder=HashingEmbedder(32))
    adapter = TestTimeAdapter(tiny_model, tiny_tokenizer, embedder=HashingEmbedder(32), source=pool, config=config())
    report = adapter.adapt("open the fridge")
    assert report.decisions == 0 and report.steps == 4


def test_a_source_without_learn_from_support_is_a_clear_error(tiny_model, tiny_tokenizer):
    class Plain:
        def candidates(self, vector, k, *, task=None, exclude_episode=None):
            raise AssertionError("must not be called")

    adapter = TestTimeAdapter(tiny_model, tiny_tokenizer, embedder=HashingEmbedder(32), source=Plain(),
                              config=config(learn_from=LearnFrom(outcomes=["won"])))
    with pytest.raises(TypeError, match="learn_from"):
        adapter.adapt("open the fridge")


def test_per_task_incremental_works_with_decisions(tiny_model, tiny_tokenizer):
    adapter = TestTimeAdapter(tiny_model, tiny_tokenizer, embedder=HashingEmbedder(32), source=decision_pool(),
                              config=config(mode="per_task", incremental=True, learn_from=LearnFrom(outcomes=["won"])))
    first = adapter.adapt("The fridge is open.", task="g")
    again = adapter.adapt("The fridge is open.", task="g")
    assert first.steps == 4 and first.decisions == len(first.selected_ids)
    assert again.steps == 0 and again.task_steps == 4 and again.adapted


def test_a_decision_whose_answer_cannot_fit_is_left_out_with_its_reason(tiny_model, tiny_tokenizer):
    long_answer = " ".join(["take the yellow potato from the fridge"] * 12)
    steps = [decision_step("The fridge is open.", prompt("The fridge is open."), long_answer),
             decision_step("The fridge is open. A potato.", prompt("The fridge is open."), "take potato")]
    pool = InMemoryCandidates([st["text"] for st in steps], embedder=HashingEmbedder(32), ids=["long", "short"],
                              rows=[{"kind": st["kind"], "metadata": st["metadata"]} for st in steps])
    adapter = TestTimeAdapter(tiny_model, tiny_tokenizer, embedder=HashingEmbedder(32), source=pool,
                              config=config(selection=SelectionConfig(method="knn", n=2, k=10)))
    report = adapter.adapt("The fridge is open.")
    assert set(report.selected_ids) == {"long", "short"}
    assert list(report.excluded) == ["long"] and "96" in report.excluded["long"]
    trained = dict(zip(report.selected_ids, report.trained_counts, strict=True))
    assert trained == {"long": 0, "short": 1} and report.steps == 1
