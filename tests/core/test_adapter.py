"""TestTimeAdapter on the tiny model: reports, modes, leakage exclusion and failure safety."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from hullft_agent.adapter import TestTimeAdapter
from hullft_agent.candidates import CandidatePool, InMemoryCandidates
from hullft_agent.config import AdapterConfig, AdaptOverrides, FinetuneConfig, LoRAConfig, SelectionConfig
from hullft_agent.memory.testing import HashingEmbedder

TEXTS = [
    "open the fridge and take the potato",
    "go north to the pantry and take the salt",
    "cook the potato on the stove then eat it",
    "the kitchen has a stove a counter and a fridge",
    "slice the yellow potato with the knife",
    "go south to the garden and pick the apple",
]
EPISODES = ["e1", "e1", "e2", "e2", "e3", "e3"]


def make_config(**selection) -> AdapterConfig:
    return AdapterConfig(
        selection=SelectionConfig(**{"n": 4, "k": 6, **selection}),
        finetune=FinetuneConfig(lr=1e-2, max_length=32, lora=LoRAConfig(r=4, alpha=8)),
    )


def make_adapter(tiny_model, tiny_tokenizer, texts=TEXTS, episodes=EPISODES, **config_kwargs):
    embedder = HashingEmbedder(16)
    source = InMemoryCandidates(texts, embedder=embedder, episodes=episodes) if texts else InMemoryCandidates(
        [], np.zeros((0, embedder.dim), np.float32)
    )
    config = config_kwargs.pop("config", None) or make_config(**config_kwargs)
    return TestTimeAdapter(tiny_model, tiny_tokenizer, embedder=embedder, source=source, config=config)


def logits(adapter, text="take the potato"):
    ids = adapter.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return adapter.model(ids).logits


@pytest.mark.parametrize("method", ["hullft", "knn", "sift"])
def test_adapt_reports_selection_and_changes_the_model(tiny_model, tiny_tokenizer, method):
    adapter = make_adapter(tiny_model, tiny_tokenizer, method=method)
    base = logits(adapter)
    report = adapter.adapt("take the potato from the fridge")
    assert not report.skipped and report.adapted
    assert sum(report.counts) == 4 and report.steps == 4
    assert len(report.selected_ids) == len(report.weights) == len(report.counts) == len(report.similarities)
    assert set(report.selected_ids) <= {str(i) for i in range(len(TEXTS))}
    assert report.pool_size == len(TEXTS)
    assert {"embed", "retrieve", "select", "finetune", "total"} <= set(report.timings)
    assert report.passes >= 1
    assert not torch.equal(base, logits(adapter))


def test_per_query_adapted_block_restores_base_exactly(tiny_model, tiny_tokenizer):
    adapter = make_adapter(tiny_model, tiny_tokenizer)
    base = logits(adapter)
    with adapter.adapted("cook the potato") as report:
        assert report.adapted
        assert not torch.equal(base, logits(adapter))
    assert torch.equal(base, logits(adapter))


def test_per_query_resets_between_calls(tiny_model, tiny_tokenizer):
    adapter = make_adapter(tiny_model, tiny_tokenizer)
    adapter.adapt("cook the potato")
    first = logits(adapter)
    adapter.adapt("cook the potato")
    assert torch.allclose(first, logits(adapter), atol=1e-6), "per_query must start each adaptation from base"


def test_current_episode_is_excluded(tiny_model, tiny_tokenizer):
    adapter = make_adapter(tiny_model, tiny_tokenizer)
    report = adapter.adapt("open the fridge", episode_id="e1")
    assert report.pool_size == 4
    assert not {"0", "1"} & set(report.selected_ids)


def test_empty_pool_skips_and_serves_base(tiny_model, tiny_tokenizer):
    adapter = make_adapter(tiny_model, tiny_tokenizer, texts=[], episodes=None)
    base = logits(adapter)
    report = adapter.adapt("anything at all")
    assert report.skipped and "no candidates" in report.skip_reason
    assert report.steps == 0
    assert torch.equal(base, logits(adapter))


def test_everything_filtered_out_skips(tiny_model, tiny_tokenizer):
    adapter = make_adapter(tiny_model, tiny_tokenizer, texts=TEXTS[:2], episodes=["e1", "e1"])
    report = adapter.adapt("open the fridge", episode_id="e1")
    assert report.skipped and report.pool_size == 0


def test_method_none_skips(tiny_model, tiny_tokenizer):
    adapter = make_adapter(tiny_model, tiny_tokenizer, method="none")
    base = logits(adapter)
    report = adapter.adapt("open the fridge")
    assert report.skipped and "none" in report.skip_reason
    assert torch.equal(base, logits(adapter))


def test_per_task_keeps_and_swaps_adapters(tiny_model, tiny_tokenizer, tmp_path):
    config = make_config().model_copy(update={"mode": "per_task", "adapter_dir": tmp_path})
    adapter = make_adapter(tiny_model, tiny_tokenizer, config=config)
    base = logits(adapter)
    adapter.adapt("cook the potato", task="game-a")
    after_a1 = logits(adapter)
    adapter.adapt("cook the potato", task="game-a")
    after_a2 = logits(adapter)
    assert not torch.allclose(after_a1, after_a2), "per_task keeps training the same adapter"
    adapter.adapt("go to the garden", task="game-b")
    after_b = logits(adapter)
    assert not torch.allclose(after_b, after_a2)
    adapter.adapt("cook the potato", task="game-a")  # swaps game-a back in and trains once more
    assert (tmp_path / "game-b.safetensors").exists()
    adapter.reset()
    assert torch.equal(base, logits(adapter))


def test_per_task_adapters_are_kept_per_namespace(tiny_model, tiny_tokenizer, tmp_path):
    config = make_config().model_copy(update={"mode": "per_task", "adapter_dir": tmp_path})
    adapter = make_adapter(tiny_model, tiny_tokenizer, config=config)
    adapter.adapt("cook the potato", task="session-1", namespace="tenant-a")
    after_a = logits(adapter)
    first = adapter.adapt("cook the potato", task="session-1", namespace="tenant-b")
    assert first.task_steps == first.steps, "tenant-b's session-1 starts from the base model, not tenant-a's"
    adapter.adapt("cook the potato", task="session-1", namespace="tenant-a")
    assert not torch.allclose(after_a, logits(adapter)), "tenant-a's adapter trained on"
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(files) == 2 and all("session-1" in name for name in files), files


def test_failure_mid_training_leaves_base_model(tiny_model, tiny_tokenizer, monkeypatch):
    adapter = make_adapter(tiny_model, tiny_tokenizer)
    base = logits(adapter)
    calls = {"n": 0}

    def explode(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")

    handle = adapter.model.get_base_model().model.layers[0].register_forward_hook(explode)
    with pytest.raises(RuntimeError, match="boom"):
        adapter.adapt("cook the potato")
    handle.remove()
    assert torch.equal(base, logits(adapter))


def test_non_finite_loss_is_reported_and_base_serves(tiny_model, tiny_tokenizer):
    adapter = make_adapter(tiny_model, tiny_tokenizer)
    base = logits(adapter)

    def poison(module, inputs, output):
        return output * float("nan")

    handle = adapter.model.get_base_model().model.norm.register_forward_hook(poison)
    report = adapter.adapt("cook the potato")
    handle.remove()
    assert report.skipped and "non-finite" in report.skip_reason
    assert torch.equal(base, logits(adapter))


@pytest.mark.parametrize(
    "bad",
    [
        {"n": 0},
        {"k": 0},
        {"method": "random"},
    ],
)
def test_bad_selection_settings_raise(bad):
    with pytest.raises(ValueError):
        SelectionConfig(**bad)


def test_bad_refresh_interval_raises():
    with pytest.raises(ValueError):
        FinetuneConfig(refresh_interval=0)


@pytest.mark.parametrize("context", ["", "   ", None, 3])
def test_bad_context_raises(tiny_model, tiny_tokenizer, context):
    adapter = make_adapter(tiny_model, tiny_tokenizer)
    with pytest.raises(ValueError):
        adapter.adapt(context)


def test_bad_query_vector_raises_and_keeps_base(tiny_model, tiny_tokenizer):
    adapter = make_adapter(tiny_model, tiny_tokenizer)
    base = logits(adapter)
    with pytest.raises(ValueError, match="NaN"):
        adapter.adapt("x y", query_vector=np.full(16, np.nan))
    with pytest.raises(ValueError, match="dimension"):
        adapter.adapt("x y", query_vector=np.ones(7))
    assert torch.equal(base, logits(adapter))


class TestInMemoryCandidates:
    def test_returns_top_k_by_similarity(self):
        emb = HashingEmbedder(16)
        source = InMemoryCandidates(TEXTS, embedder=emb)
        pool = source.candidates(emb.encode("take the potato"), 3)
        assert isinstance(pool, CandidatePool) and len(pool) == 3
        assert np.all(np.diff(pool.similarities) <= 1e-7)
        full = source.vectors @ emb.encode("take the potato")
        assert np.isclose(pool.similarities[0], full.max())

    def test_task_filter(self):
        emb = HashingEmbedder(16)
        source = InMemoryCandidates(TEXTS, embedder=emb, tasks=["a", "b", "a", "b", "a", "b"])
        pool = source.candidates(emb.encode("potato"), 10, task="a")
        assert {m["task"] for m in pool.metadata} == {"a"} and len(pool) == 3

    @pytest.mark.parametrize(
        "texts, embeddings, match",
        [
            (["ok", ""], np.ones((2, 4)), "texts\\[1\\]"),
            (["ok", 5], np.ones((2, 4)), "texts\\[1\\]"),
            (["a", "b"], np.array([[1.0, 0], [np.nan, 1]]), "row 1"),
            (["a", "b"], np.ones((3, 4)), "2 texts but 3"),
            (["a", "b"], np.zeros((2, 4)), "all zeros"),
        ],
    )
    def test_bad_input_raises(self, texts, embeddings, match):
        with pytest.raises(ValueError, match=match):
            InMemoryCandidates(texts, embeddings)

    def test_bad_k_raises(self):
        source = InMemoryCandidates(["a b"], np.ones((1, 4)))
        with pytest.raises(ValueError, match="k must be"):
            source.candidates(np.ones(4), 0)


def test_per_task_non_finite_loss_keeps_the_tasks_earlier_adaptation(tiny_model, tiny_tokenizer):
    config = make_config().model_copy(update={"mode": "per_task"})
    adapter = make_adapter(tiny_model, tiny_tokenizer, config=config)
    adapter.adapt("cook the potato", task="game-a")
    trained = logits(adapter)
    handle = adapter.model.get_base_model().model.norm.register_forward_hook(lambda m, i, o: o * float("nan"))
    report = adapter.adapt("cook the potato", task="game-a")
    handle.remove()
    assert report.skipped and "non-finite" in report.skip_reason
    assert torch.equal(trained, logits(adapter))


def test_on_step_reports_every_training_step(tiny_model, tiny_tokenizer):
    adapter = make_adapter(tiny_model, tiny_tokenizer)
    seen = []
    report = adapter.adapt("cook the potato", on_step=seen.append)
    assert seen == list(range(1, report.steps + 1)) and report.steps == 4


def test_reset_in_per_task_mode_keeps_the_task_adapter(tiny_model, tiny_tokenizer):
    config = make_config().model_copy(update={"mode": "per_task"})
    adapter = make_adapter(tiny_model, tiny_tokenizer, config=config)
    base = logits(adapter)
    adapter.adapt("cook the potato", task="game-a")
    trained = logits(adapter)
    adapter.reset()
    assert torch.equal(base, logits(adapter))
    adapter.adapt("cook the potato", task="game-a", overrides={"method": "none"})  # activate without training
    assert torch.equal(trained, logits(adapter))
    adapter.forget_tasks()
    adapter.adapt("cook the potato", task="game-a", overrides={"method": "none"})
    assert torch.equal(base, logits(adapter))
    assert adapter.config.selection.method == "hullft"  # overrides never change the adapter's own config


def test_a_config_is_frozen_and_overrides_reach_only_their_call(tiny_model, tiny_tokenizer):
    adapter = make_adapter(tiny_model, tiny_tokenizer)
    with pytest.raises(ValidationError):
        adapter.config.selection.n = 2
    with pytest.raises(AttributeError):
        adapter.config = make_config()
    report = adapter.adapt("cook the potato", overrides=AdaptOverrides(n=2, method="knn"))
    assert (report.n, report.method, sum(report.counts)) == (2, "knn", 2)
    report = adapter.adapt("cook the potato")
    assert (report.n, report.method, sum(report.counts)) == (4, "hullft", 4)
    with pytest.raises(ValidationError):
        adapter.adapt("cook the potato", overrides={"n": 0})
    with pytest.raises(ValueError, match="session trains 'lora'"):
        adapter.adapt("cook the potato", overrides={"finetune": FinetuneConfig(method="full")})


def test_a_per_call_source_replaces_the_adapters_for_that_call(tiny_model, tiny_tokenizer):
    adapter = make_adapter(tiny_model, tiny_tokenizer)
    other = InMemoryCandidates(["slice the carrot", "dice the carrot"], embedder=HashingEmbedder(16), ids=["x", "y"])
    report = adapter.adapt("cook the potato", source=other)
    assert set(report.selected_ids) <= {"x", "y"} and report.pool_size == 2
    assert adapter.adapt("cook the potato").pool_size == 6


def test_in_memory_candidates_can_exclude_a_task():
    emb = HashingEmbedder(16)
    source = InMemoryCandidates(TEXTS, embedder=emb, tasks=["a", "b", "a", "b", "a", None])
    pool = source.candidates(emb.encode("potato"), 10, exclude_task="a")
    assert [m["task"] for m in pool.metadata].count("a") == 0 and len(pool) == 3


def incremental_config(**selection) -> AdapterConfig:
    return make_config(**selection).model_copy(update={"mode": "per_task", "incremental": True})


def test_per_task_incremental_trains_only_what_the_task_adapter_lacks(tiny_model, tiny_tokenizer):
    adapter = make_adapter(tiny_model, tiny_tokenizer, config=incremental_config())
    first = adapter.adapt("cook the potato on the stove", task="game-a")
    assert first.trained_counts == first.counts and first.steps == 4 and first.task_steps == 4
    trained = logits(adapter)
    again = adapter.adapt("cook the potato on the stove", task="game-a")
    assert again.selected_ids == first.selected_ids and again.counts == first.counts
    assert again.trained_counts == [0] * len(again.counts) and again.steps == 0 and again.passes == 0
    assert again.adapted and again.task_steps == 4  # the task's adapter answers, nothing new to train
    assert torch.equal(trained, logits(adapter))
    ledger = dict.fromkeys(first.selected_ids, 0)
    for row_id, count in zip(first.selected_ids, first.counts, strict=True):
        ledger[row_id] += count
    other = adapter.adapt("go south to the garden and pick the apple", task="game-a")
    expected = [max(0, c - ledger.get(i, 0)) for i, c in zip(other.selected_ids, other.counts, strict=True)]
    assert other.trained_counts == expected and other.steps == sum(expected)
    assert other.task_steps == 4 + sum(expected)


def test_max_instances_trains_the_heaviest_rows_and_per_task_catches_up(tiny_model, tiny_tokenizer):
    config = incremental_config(n=5).model_copy(update={"max_instances": 2})
    adapter = make_adapter(tiny_model, tiny_tokenizer, config=config)
    first = adapter.adapt("cook the potato on the stove", task="game-a")
    assert sum(first.trained_counts) == first.steps == 2 and first.deferred == sum(first.counts) - 2
    rows = list(zip(first.trained_counts, first.counts, first.weights, strict=True))
    assert min(w for t, _, w in rows if t) >= max(w for t, c, w in rows if t < c)  # the heaviest rows went first
    second = adapter.adapt("cook the potato on the stove", task="game-a")  # the same selection: the rest, 2 more
    assert second.steps == 2 and second.task_steps == 4
    while (report := adapter.adapt("cook the potato on the stove", task="game-a")).steps:
        assert report.steps <= 2
    assert report.deferred == 0 and report.task_steps == sum(first.counts)  # caught up with the whole multiset
    per_query = adapter.adapt("cook the potato", overrides={"mode": "per_query", "max_instances": 1})
    assert per_query.steps == 1 and per_query.deferred == sum(per_query.counts) - 1


def test_incremental_ledgers_are_per_task_and_per_query_ignores_them(tiny_model, tiny_tokenizer):
    adapter = make_adapter(tiny_model, tiny_tokenizer, config=incremental_config())
    adapter.adapt("cook the potato", task="game-a")
    report_b = adapter.adapt("cook the potato", task="game-b")
    assert report_b.steps == 4 and report_b.trained_counts == report_b.counts  # game-b has its own ledger
    for _ in range(2):
        report = adapter.adapt("cook the potato", task="game-a", overrides={"mode": "per_query"})
        assert report.steps == 4 and report.trained_counts == report.counts and report.task_steps == 0


def test_incremental_ledger_is_saved_with_the_task_adapter(tiny_model, tiny_tokenizer, tmp_path):
    config = incremental_config().model_copy(update={"adapter_dir": tmp_path})
    adapter = make_adapter(tiny_model, tiny_tokenizer, config=config)
    adapter.adapt("cook the potato", task="game-a")
    adapter.save_tasks()
    assert (tmp_path / "game-a.ledger.json").exists()
    adapter.forget_tasks()  # drops what is in memory; the files stay
    report = adapter.adapt("cook the potato", task="game-a")
    assert report.steps == 0 and report.task_steps == 4


def test_incremental_ledger_is_restored_when_training_fails(tiny_model, tiny_tokenizer):
    adapter = make_adapter(tiny_model, tiny_tokenizer, config=incremental_config())
    adapter.adapt("cook the potato", task="game-a")
    handle = adapter.model.get_base_model().model.norm.register_forward_hook(lambda m, i, o: o * float("nan"))
    report = adapter.adapt("go south to the garden and pick the apple", task="game-a")
    handle.remove()
    assert report.skipped and "non-finite" in report.skip_reason
    retry = adapter.adapt("go south to the garden and pick the apple", task="game-a")
    assert retry.steps > 0 and retry.task_steps == 4 + retry.steps  # nothing of the failed call was recorded
