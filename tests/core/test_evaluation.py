"""BPB evaluation on logged episodes: units, leakage exclusion, the runner's outputs, resume, bad input."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import build_tiny_model

from hullft_agent.candidates import CandidatePool, InMemoryCandidates
from hullft_agent.config import FinetuneConfig, LoRAConfig
from hullft_agent.evaluation import (
    METHODS,
    EvalConfig,
    LeakageError,
    NoUnitsError,
    episode_steps,
    episode_units,
    read_results,
    run_evaluation,
    select_episodes,
    text_units,
)
from hullft_agent.evaluation import runner as runner_module
from hullft_agent.memory import TrajectoryMemory
from hullft_agent.memory.schema import render_window
from hullft_agent.memory.testing import HashingEmbedder
from hullft_agent.metrics import score_texts

OBJECTS = ["potato", "apple", "knife", "salt", "carrot", "pepper", "onion"]
ROOMS = ["kitchen", "pantry", "garden", "cellar"]
EPISODE_STEPS = 7


def make_episodes(n: int = 6, seed: int = 0) -> list[tuple[str, str, str, list[tuple[str, str]]]]:
    """(episode_id, task, split, steps): two tasks, the last two episodes held out (split 'test')."""
    rng = random.Random(seed)
    episodes = []
    for e in range(n):
        task = "cook" if e % 2 == 0 else "explore"
        steps = []
        for s in range(EPISODE_STEPS):
            if s % 2 == 0:
                steps.append(("observation", f"You are in the {rng.choice(ROOMS)}. A {rng.choice(OBJECTS)} is here."))
            else:
                steps.append(("action", f"{'take' if task == 'cook' else 'go to'} {rng.choice(OBJECTS + ROOMS)}"))
        episodes.append((f"ep{e}", task, "test" if e >= n - 2 else "train", steps))
    return episodes


def build_memory(path, granularity: str = "window") -> TrajectoryMemory:
    memory = TrajectoryMemory.open(
        path, embedder=HashingEmbedder(32), granularity=granularity, window=3 if granularity == "window" else None
    )
    for episode_id, task, split, steps in make_episodes():
        memory.log_episode(episode_id, steps, task=task, metadata={"split": split})
    return memory


@pytest.fixture()
def memory(tmp_path) -> TrajectoryMemory:
    return build_memory(tmp_path / "memory")


def small_config(**overrides) -> EvalConfig:
    values = {
        "methods": list(METHODS),
        "n": [2, 3],
        "k": 8,
        "finetune": FinetuneConfig(lr=1e-2, max_length=32, lora=LoRAConfig(r=4, alpha=8)),
        "bootstrap": 100,
    }
    return EvalConfig(**{**values, **overrides})


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def table(result) -> list[tuple]:
    return [(r["method"], r["n"], r["units"], r["bpb"], tuple(r["ci"]), r["delta_vs_base"], r["passes_mean"])
            for r in result.summary["results"]]


# ---------------------------------------------------------------------------------------- units


@pytest.mark.parametrize("granularity", ["window", "step"])
def test_units_are_consecutive_windows_rendered_like_memory_rows(tmp_path, granularity):
    memory = build_memory(tmp_path / granularity, granularity)
    steps = {e: s for e, _, _, s in make_episodes()}
    assert [(k, t) for _, k, t in episode_steps(memory, "ep4")] == steps["ep4"]

    units = episode_units(memory, split="test", unit_size=4)
    assert [u.id for u in units] == ["ep4:0-3", "ep4:4-6", "ep5:0-3", "ep5:4-6"]  # the last unit is shorter
    first = units[0]
    assert first.text == render_window([(i, *steps["ep4"][i]) for i in range(4)])
    assert first.query == first.text and first.episode == "ep4" and first.task == "cook" and first.group == "cook"
    assert first.text.splitlines()[0] == f"observation: {steps['ep4'][0][1]}"
    if granularity == "window":  # a window row of the memory is rendered the same way
        row = memory.get([r for r in memory.candidates(context=first.text, k=50).ids
                          if memory.get(r)["episode_id"] == "ep4" and memory.get(r)["step"] == 2][0])
        assert row["text"] == render_window([(i, *steps["ep4"][i]) for i in range(3)])

    assert len(episode_units(memory, split="test", unit_size=1)) == 2 * EPISODE_STEPS
    assert len(episode_units(memory, split="test", unit_size=100)) == 2


def test_context_query_uses_only_the_steps_before_the_unit(memory):
    units = episode_units(memory, split="test", unit_size=2, query="context")
    assert all(u.first_step > 0 for u in units)  # an episode's first unit has no context: left out
    by_id = {u.id: u for u in units}
    unit = by_id["ep4:4-5"]
    steps = episode_steps(memory, "ep4")
    assert unit.query == render_window(steps[2:4])  # context_steps defaults to unit_size
    assert unit.text == render_window(steps[4:6])
    wide = {u.id: u for u in episode_units(memory, split="test", unit_size=2, query="context", context_steps=4)}
    assert wide["ep4:4-5"].query == render_window(steps[0:4])


def test_episode_selection_by_task_and_ids(memory):
    assert select_episodes(memory, split="test") == [("ep4", "cook"), ("ep5", "explore")]
    assert select_episodes(memory, task="explore") == [("ep1", "explore"), ("ep3", "explore"), ("ep5", "explore")]
    assert select_episodes(memory, split="test", task="cook") == [("ep4", "cook")]
    assert select_episodes(memory, episodes=["ep3", "ep0"]) == [("ep3", "explore"), ("ep0", "cook")]
    units = episode_units(memory, episodes=["ep0"], unit_size=4, max_units=1)
    assert [u.id for u in units] == ["ep0:0-3"]


def test_bad_unit_choices_say_what_is_wrong(memory, tmp_path):
    with pytest.raises(NoUnitsError, match=r"split='valid'.*'test': 2"):
        episode_units(memory, split="valid")
    with pytest.raises(NoUnitsError, match="not found"):
        episode_units(memory, episodes=["nope"])
    with pytest.raises(NoUnitsError, match="task 'fly'"):
        episode_units(memory, task="fly")
    with pytest.raises(ValueError, match="split=, task= or episodes="):
        episode_units(memory)
    with pytest.raises(ValueError, match="unit_size"):
        episode_units(memory, split="test", unit_size=0)
    empty = TrajectoryMemory.open(tmp_path / "empty", embedder=HashingEmbedder(32))
    with pytest.raises(NoUnitsError, match="holds no episodes"):
        episode_units(empty, split="test")
    with pytest.raises(ValueError, match="duplicate unit id"):
        text_units([("a", "x y", "g"), ("a", "z", "g")])
    with pytest.raises(ValueError, match="text must be a non-empty"):
        text_units([("a", "  ", "g")])
    with pytest.raises(NoUnitsError):
        text_units([])
    units = text_units([("a", "some text", "g1"), {"id": "b", "text": "more", "episode": "e", "task": "t"}])
    assert units[0].group == "g1" and units[1].group == "all" and units[1].episode == "e"


# ---------------------------------------------------------------------------------------- runs


def test_run_writes_every_output_and_never_trains_on_the_units_episode(memory, tmp_path, tiny_tokenizer):
    units = episode_units(memory, split="test", unit_size=4)
    base_model = build_tiny_model(len(tiny_tokenizer))
    expected_base = score_texts(base_model, tiny_tokenizer, [u.text for u in units])
    out = tmp_path / "out"
    result = run_evaluation(
        units, build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, embedder=memory.embedder, source=memory,
        out_dir=out, config=small_config(), progress=False,
    )
    assert result.complete
    records = lines(out / "results.jsonl")
    assert len(records) == len(units) * (1 + 4 * 2)
    for name in ("run.json", "summary.json", "summary.md", "bpb_vs_n.png", "bpb_vs_time.png"):
        assert (out / name).stat().st_size > 0
    for name in ("bpb_vs_n.png", "bpb_vs_time.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text()) == result.summary
    assert "| hullft | 3 |" in (out / "summary.md").read_text()

    # base = the unadapted model: per-unit NLL equals scoring with a fresh copy of the model
    base = {r["unit"]: r for r in records if r["method"] == "base"}
    for unit, doc in zip(units, expected_base.documents, strict=True):
        assert base[unit.id]["nll_nats"] == pytest.approx(doc.nll_nats, rel=1e-5)
        assert base[unit.id]["n_bytes"] == doc.n_bytes
    # the byte-weighted base BPB of the table is the hand computation
    assert result.summary["results"][0]["bpb"] == pytest.approx(expected_base.bpb, rel=1e-5)

    adapted = [r for r in records if r["method"] != "base"]
    assert all(r["pool_size"] > 0 and sum(r["counts"]) == r["n"] and r["passes"] >= 1 for r in adapted)
    assert {r["passes"] for r in adapted if r["method"] == "hullft-noreuse"} <= {2, 3}
    for r in adapted:  # leakage: no selected sequence comes from the unit's own episode
        rows = memory.get(r["selected_ids"])
        assert len(rows) == len(r["selected_ids"])
        assert all(row["episode_id"] != r["episode"] for row in rows)
        assert set(r["times"]) == {"embed", "retrieve", "select", "finetune", "score", "total"}
    by_group = result.summary["by_group"]
    assert set(by_group) == {"cook", "explore"} and all(row["units"] == 2 for row in by_group["cook"])


class LeakySource:
    """A broken source that ignores exclude_episode."""

    def __init__(self, inner: InMemoryCandidates) -> None:
        self.inner = inner

    def candidates(self, vector, k, *, task=None, exclude_episode=None) -> CandidatePool:
        return self.inner.candidates(vector, k, task=task)


def pool_source(units, *, tasks: bool = False) -> InMemoryCandidates:
    """Memory rows = every unit's text (so each unit's own episode is in the pool) plus a few others."""
    texts = [u.text for u in units] + ["take the potato", "go to the garden", "open the fridge"]
    episodes = [u.episode for u in units] + ["x1", "x2", "x3"]
    task_list = [u.task for u in units] + ["cook", "explore", "cook"]
    emb = HashingEmbedder(32)
    return InMemoryCandidates(texts, emb.encode(texts), episodes=episodes, tasks=task_list if tasks else None)


def test_leakage_guard_stops_a_source_that_returns_the_units_episode(memory, tmp_path, tiny_model, tiny_tokenizer):
    units = episode_units(memory, split="test", unit_size=4)
    leaky = LeakySource(pool_source(units))
    with pytest.raises(LeakageError, match="own episode"):
        run_evaluation(units, tiny_model, tiny_tokenizer, embedder=HashingEmbedder(32), source=leaky,
                       out_dir=tmp_path / "leak", config=small_config(methods=["hullft"], n=[2]), progress=False)


def test_exclude_task_keeps_the_units_task_out(memory, tmp_path, tiny_model, tiny_tokenizer):
    units = episode_units(memory, split="test", unit_size=4)
    for source, name in ((pool_source(units, tasks=True), "inmem"), (memory, "lance")):
        result = run_evaluation(
            units, build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, embedder=HashingEmbedder(32),
            source=source, out_dir=tmp_path / name, config=small_config(methods=["knn"], n=[2], exclude_task=True),
            progress=False,
        )
        for r in lines(tmp_path / name / "results.jsonl"):
            if name == "lance":
                assert all(row["task"] != r["task"] for row in memory.get(r["selected_ids"]))
            else:
                ids = {str(i): t for i, t in enumerate(source.tasks)}
                assert all(ids[i] != r["task"] for i in r["selected_ids"])
        assert result.complete


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid methods: base, knn, sift, hullft, hullft-noreuse"):
        EvalConfig(methods=["base", "hulft"])
    with pytest.raises(ValueError, match="N must be an integer >= 1"):
        EvalConfig(n=[0])


def test_a_unit_longer_than_the_context_is_scored_in_windows(tmp_path, tiny_model, tiny_tokenizer):
    long_text = " ".join(f"step {i}: take the potato and go north to the pantry." for i in range(12))
    units = text_units([{"id": "long", "text": long_text, "episode": "e0", "group": "g"}])
    assert len(tiny_tokenizer(long_text)["input_ids"]) > 64  # the tiny model has 64 positions
    source = InMemoryCandidates(["take the potato", "go north"], HashingEmbedder(32).encode(["take the potato", "go north"]),
                                episodes=["e1", "e2"])
    result = run_evaluation(units, tiny_model, tiny_tokenizer, embedder=HashingEmbedder(32), source=source,
                            out_dir=tmp_path / "o", config=small_config(methods=["base", "hullft"], n=[2]),
                            progress=False)
    records = lines(tmp_path / "o" / "results.jsonl")
    assert all(r["n_tokens"] > 64 and np.isfinite(r["bpb"]) for r in records)
    assert result.complete


def test_empty_memory_pool_is_reported_as_skipped(tmp_path, tiny_model, tiny_tokenizer):
    units = text_units([{"id": "u", "text": "take the potato", "episode": "e0"}])
    only_own = InMemoryCandidates(["take it"], HashingEmbedder(32).encode(["take it"]), episodes=["e0"])
    result = run_evaluation(units, tiny_model, tiny_tokenizer, embedder=HashingEmbedder(32), source=only_own,
                            out_dir=tmp_path / "o", config=small_config(methods=["base", "knn"], n=[2]),
                            progress=False)
    rows = {r["method"]: r for r in result.summary["results"]}
    assert rows["knn"]["skipped"] == 1 and rows["knn"]["bpb"] == rows["base"]["bpb"]


# ---------------------------------------------------------------------------------------- resume


def interrupt_after(monkeypatch, jobs: int) -> None:
    real = runner_module._run_job
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > jobs:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_module, "_run_job", flaky)


@pytest.mark.parametrize("mode", ["per_query", "per_task"])
def test_resume_after_an_interruption_gives_the_same_table(memory, tmp_path, tiny_tokenizer, monkeypatch, mode):
    units = episode_units(memory, split="test", unit_size=4)
    config = small_config(methods=["base", "knn", "hullft"], n=[2, 3], mode=mode)
    kwargs = {"embedder": memory.embedder, "source": memory, "config": config, "progress": False}
    full = run_evaluation(units, build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, out_dir=tmp_path / "full",
                          **kwargs)

    out = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 7)
        with pytest.raises(KeyboardInterrupt):
            run_evaluation(units, build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, out_dir=out, **kwargs)
    assert len(lines(out / "results.jsonl")) == 7
    partial = json.loads((out / "summary.json").read_text())
    assert partial["complete"] is False and partial["jobs"] == {"done": 7, "total": 20}
    with open(out / "results.jsonl", "a") as handle:  # a torn line, as a kill mid-write leaves
        handle.write('{"type": "result", "unit": "ep5:0-3", "meth')

    with pytest.raises(ValueError, match="--resume"):
        run_evaluation(units, build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, out_dir=out, **kwargs)
    done = run_evaluation(units, build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, out_dir=out, resume=True,
                          **kwargs)
    assert done.complete and table(done) == table(full)
    def groups(result):
        return {g: [(r["method"], r["n"], r["bpb"], r["ci"]) for r in rows] for g, rows in result.summary["by_group"].items()}

    assert groups(done) == groups(full)
    records = lines(out / "results.jsonl")  # valid JSON lines again, one per key
    assert len(records) == len({(r["unit"], r["method"], r["n"]) for r in records}) == 20

    with pytest.raises(ValueError, match="differs in"):
        run_evaluation(units, build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, out_dir=out, resume=True,
                       **{**kwargs, "config": small_config(methods=["base"], k=5, mode=mode)})


def test_resume_skips_finished_jobs_and_adds_new_methods(memory, tmp_path, tiny_tokenizer, monkeypatch):
    units = episode_units(memory, split="test", unit_size=4)
    out = tmp_path / "o"
    kwargs = {"embedder": memory.embedder, "source": memory, "progress": False, "out_dir": out}
    run_evaluation(units, build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer,
                   config=small_config(methods=["base", "knn"], n=[2]), **kwargs)
    ran = []
    real = runner_module._run_job
    monkeypatch.setattr(runner_module, "_run_job", lambda *a, **k: ran.append(a[5]) or real(*a, **k))
    result = run_evaluation(units, build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, resume=True,
                            config=small_config(methods=["base", "knn", "sift"], n=[2]), **kwargs)
    assert ran == ["sift"] * len(units)
    assert [r["method"] for r in result.summary["results"]] == ["base", "knn", "sift"]


def test_read_results_cuts_a_torn_tail_but_refuses_a_corrupt_middle(tmp_path):
    path = tmp_path / "results.jsonl"
    good = {"type": "result", "unit": "u", "method": "base", "n": 0}
    path.write_text(json.dumps(good) + "\n" + '{"type": "res')
    records, torn = read_results(path, repair=True)
    assert records == [good] and torn > 0
    assert path.read_text() == json.dumps(good) + "\n"
    path.write_text("garbage\n" + json.dumps(good) + "\n")
    with pytest.raises(ValueError, match="line 1 is corrupt"):
        read_results(path)


# ---------------------------------------------------------------------------------------- protocols, modes


def test_per_task_mode_accumulates_within_a_task(tmp_path, tiny_tokenizer):
    texts = ["take the potato from the fridge", "take the apple from the fridge", "go north to the garden"]
    units = text_units([{"id": f"u{i}", "text": t, "episode": f"q{i}", "task": "cook"} for i, t in enumerate(texts)])
    pool = ["take the potato", "open the fridge", "take the apple", "go north", "the garden is green"]
    source = InMemoryCandidates(pool, HashingEmbedder(32).encode(pool), episodes=[f"m{i}" for i in range(5)])
    results = {}
    for mode in ("per_query", "per_task"):
        out = tmp_path / mode
        run_evaluation(units, build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, embedder=HashingEmbedder(32),
                       source=source, out_dir=out, config=small_config(methods=["knn"], n=[2], mode=mode),
                       progress=False)
        results[mode] = {r["unit"]: r["nll_nats"] for r in lines(out / "results.jsonl")}
    assert results["per_query"]["u0"] == pytest.approx(results["per_task"]["u0"], rel=1e-6)  # first unit: same start
    assert results["per_query"]["u2"] != pytest.approx(results["per_task"]["u2"], rel=1e-6)  # later: accumulated


def test_reference_protocol_full_finetuning_needs_a_plain_model(tmp_path, tiny_tokenizer):
    units = text_units([{"id": "u", "text": "take the potato from the fridge", "episode": "q"}])
    pool = ["take the potato", "open the fridge", "go north"]
    source = InMemoryCandidates(pool, HashingEmbedder(32).encode(pool), episodes=["a", "b", "c"])
    model = build_tiny_model(len(tiny_tokenizer))
    result = run_evaluation(units, model, tiny_tokenizer, embedder=HashingEmbedder(32), source=source,
                            out_dir=tmp_path / "ref", config=small_config(methods=["base", "hullft"], n=[2],
                                                                           protocol="reference"), progress=False)
    run = json.loads((tmp_path / "ref" / "run.json").read_text())
    assert run["fingerprint"]["finetune"]["method"] == "full"
    assert run["fingerprint"]["finetune"]["pad_to"] == 64  # 1024, capped at the tiny model's context
    assert run["fingerprint"]["finetune"]["lr"] == 5e-5
    rows = {r["method"]: r for r in result.summary["results"]}
    assert rows["hullft"]["bpb"] != rows["base"]["bpb"]

    lora_wrapped = build_tiny_model(len(tiny_tokenizer))
    run_evaluation(units, lora_wrapped, tiny_tokenizer, embedder=HashingEmbedder(32), source=source,
                   out_dir=tmp_path / "lora", config=small_config(methods=["base"], n=[2]), progress=False)
    with pytest.raises(ValueError, match="already carries LoRA layers"):
        run_evaluation(units, lora_wrapped, tiny_tokenizer, embedder=HashingEmbedder(32), source=source,
                       out_dir=tmp_path / "ref2", config=small_config(methods=["base"], n=[2], protocol="reference"),
                       progress=False)


# ---------------------------------------------------------------------------------------- CLI


def cli_runner(monkeypatch, tokenizer):
    """`hullft-agent eval ...` as a function of its arguments, on the tiny model and the hashing embedder."""
    import argparse

    from hullft_agent.evaluation import cli as eval_cli

    monkeypatch.setattr(eval_cli, "make_model",
                        lambda name: SimpleNamespace(model=build_tiny_model(len(tokenizer)), tokenizer=tokenizer))
    monkeypatch.setattr(eval_cli, "make_embedder", lambda name: HashingEmbedder(32))
    parser = argparse.ArgumentParser(prog="hullft-agent")
    eval_cli.add_eval_commands(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        return args.func(args)

    return run


@pytest.fixture()
def cli(monkeypatch, tiny_tokenizer):
    return cli_runner(monkeypatch, tiny_tokenizer)


def test_cli_eval_runs_resumes_and_reports_bad_input(cli, memory, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "cli-out")
    common = ["--memory", memory.uri, "--n", "2", "--k", "6", "--unit-size", "4", "--lr", "0.01",
              "--max-length", "32", "--bootstrap", "50", "--out", out, "--no-progress"]
    assert cli("eval", "--split", "test", "--methods", "base", "hullft", *common) == 0
    printed = capsys.readouterr().out
    assert "| hullft | 2 | 4 |" in printed and "eval: 4 unit(s)" in printed

    assert cli("eval", "--split", "test", "--methods", "base", "hullft", *common) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli("eval", "--split", "test", "--methods", "base", "hullft", *common, "--resume") == 0

    assert cli("eval", "--split", "test", "--methods", "base", "bogus", *common) == 2
    assert "valid methods: base, knn, sift, hullft, hullft-noreuse" in capsys.readouterr().err
    assert cli("eval", "--split", "holdout", "--methods", "base", *common, "--overwrite") == 2
    assert "split='holdout'" in capsys.readouterr().err
    assert cli("eval", "--methods", "base", *common, "--overwrite") == 2
    assert "split=, task= or episodes=" in capsys.readouterr().err
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(runner_module, "_run_job", interrupted)
        assert cli("eval", "--split", "test", "--methods", "base", *common, "--overwrite") == 130
    assert "rerun the same command with --resume" in capsys.readouterr().err
    missing = ["--memory", str(tmp_path / "none")] + common[2:]
    assert cli("eval", "--split", "test", "--methods", "base", *missing, "--overwrite") == 2
    assert "no trajectory memory" in capsys.readouterr().err


def test_cli_minipile_on_the_offline_domains(cli, tmp_path, capsys):
    out = tmp_path / "pile"
    rc = cli("minipile", "--domains", "docs", "code", "--train-per-domain", "12", "--test-per-domain", "1",
             "--seq-chars", "200", "--methods", "base", "knn", "--n", "2", "--k", "8", "--max-length", "32",
             "--bootstrap", "50", "--out", str(out), "--no-progress", "--no-plots")
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| docs | 1 |" in printed and "| code | 1 |" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metadata"]["minipile"]["counts"]["docs"]["train"] == 12
    assert not (out / "bpb_vs_n.png").exists()
