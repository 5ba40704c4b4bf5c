"""Offline behaviour cloning (the `bc` baseline), the continual view of a comparison, and the new flags.

No games here: behaviour cloning runs on hand-made decision rows and a tiny model, the continual
summary on a hand-made comparison, so these tests take a few seconds.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model, build_tiny_tokenizer
from pydantic import ValidationError

from hullft_agent.agents.compare import (
    MODES,
    CompareConfig,
    Comparison,
    continual_summary,
)
from hullft_agent.agents.report import continual_table, write_report
from hullft_agent.agents.textworld import EpisodeResult
from hullft_agent.config import DecisionFormat, FinetuneConfig, LoRAConfig
from hullft_agent.decisions import decision_instance, decision_step
from hullft_agent.errors import InvalidArgumentError
from hullft_agent.finetune import behaviour_cloning, encode_for_training

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = build_tiny_tokenizer()
FINETUNE = FinetuneConfig(lr=0.05, max_length=64, lora=LoRAConfig(r=4, alpha=8))
FMT = DecisionFormat(system=False, history=0)


def rows() -> list[dict]:
    states = [("You are in a kitchen. There is a closed fridge.", "open fridge"),
              ("The fridge is open. A yellow potato is inside.", "take yellow potato"),
              ("You carry a yellow potato. There is a stove.", "cook yellow potato with stove")]
    return [decision_step(obs, [{"role": "system", "content": "Play."}, {"role": "user", "content": obs}], answer,
                          actor="expert") for obs, answer in states]


def answer_loss(model, row: dict) -> float:
    enc = encode_for_training(TOKENIZER, decision_instance(row, TOKENIZER, FMT), 64)
    with torch.no_grad():
        return float(model(**enc).loss)


# ------------------------------------------------------------------------------ behaviour cloning


def test_behaviour_cloning_trains_every_row_each_epoch_and_raises_the_answers_probability():
    base = build_tiny_model(len(TOKENIZER))
    before = [answer_loss(base, r) for r in rows()]
    bc = behaviour_cloning(copy.deepcopy(base), TOKENIZER, rows(), FINETUNE, fmt=FMT, epochs=2, seed=0)
    assert (bc.rows, bc.epochs, bc.train.steps, bc.train.passes) == (3, 2, 6, 6) and bc.train.ok
    assert 0 < bc.train.loss_tokens < bc.train.tokens, "the prompt is masked: only answer tokens count"
    after = [answer_loss(bc.model, r) for r in rows()]
    assert all(a < b for a, b in zip(after, before, strict=True)), (before, after)
    assert [answer_loss(base, r) for r in rows()] == before, "training a copy leaves the base it came from unchanged"
    numbers = bc.to_dict()
    assert numbers["steps"] == 6 and numbers["seconds"] >= numbers["train_s"] > 0 and numbers["first_loss"] > 0


def test_merged_behaviour_cloning_answers_like_the_trained_adapter_as_a_plain_model():
    base = build_tiny_model(len(TOKENIZER))
    bc = behaviour_cloning(copy.deepcopy(base), TOKENIZER, rows(), FINETUNE, fmt=FMT, epochs=2, seed=0)
    ids = encode_for_training(TOKENIZER, decision_instance(rows()[1], TOKENIZER, FMT), 64)["input_ids"]
    with torch.no_grad():
        trained, untrained = bc.model(input_ids=ids).logits, base(input_ids=ids).logits
    plain = bc.merged()
    assert not any("lora_" in name for name, _ in plain.named_parameters()), "the LoRA is folded into the weights"
    with torch.no_grad():
        merged = plain(input_ids=ids).logits
    assert torch.allclose(merged, trained, atol=1e-4)
    assert not torch.allclose(merged, untrained, atol=1e-2), "the training is kept, not dropped"


def test_behaviour_cloning_is_seeded():
    def adapter(seed: int) -> dict[str, torch.Tensor]:
        bc = behaviour_cloning(build_tiny_model(len(TOKENIZER)), TOKENIZER, rows(), FINETUNE, fmt=FMT, epochs=2,
                               seed=seed)
        return bc.session.state_dict()

    first, again, other = adapter(0), adapter(0), adapter(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first), "another seed is another order of instances"


def test_behaviour_cloning_refuses_what_it_cannot_learn_from():
    model = build_tiny_model(len(TOKENIZER))
    with pytest.raises(InvalidArgumentError, match="at least one decision row"):
        behaviour_cloning(model, TOKENIZER, [], FINETUNE)
    text_row = {"kind": "observation", "text": "You are in a kitchen.", "metadata": {}}
    with pytest.raises(InvalidArgumentError, match=r"rows\[1\] is not a decision row \(kind 'observation'"):
        behaviour_cloning(model, TOKENIZER, [rows()[0], text_row], FINETUNE)
    with pytest.raises(InvalidArgumentError, match="epochs must be an integer >= 1, got 0"):
        behaviour_cloning(model, TOKENIZER, rows(), FINETUNE, epochs=0)


# ------------------------------------------------------------------------------ the continual view


def episodes(label: str, scores: list[int | None]) -> list[EpisodeResult]:
    """Games g0, g1, ... in stream order; None is a game that could not start."""
    return [EpisodeResult(game=f"g{i}", game_file=f"/games/g{i}.z8", episode_id=f"g{i}/agent/{label}", label=label,
                          outcome="error" if s is None else "lost", reason="", score=s or 0, max_score=5)
            for i, s in enumerate(scores)]


def hand_made(tmp_path: Path) -> Comparison:
    result = Comparison(config=CompareConfig(modes=["none", "decisions", "bc", "knn"]), out_dir=tmp_path)
    result.episodes = {
        "none": episodes("none", [0, 1, 0, 1, 2]),          # halves g0 g1 | g3 g4 (g2 left out): 0.5 -> 1.5
        "decisions": episodes("decisions", [0, 0, 3, 3, 4]),  # 0.0 -> 3.5
        "bc": episodes("bc", [1, 2, None, 2, 3]),            # g2 could not start: halves g0 g1 | g3 g4 again
        "knn": episodes("knn", [1, 1]),                       # a partial mode: halves g0 | g1
    }
    return result


def test_continual_summary_on_a_hand_made_comparison(tmp_path):
    summary = continual_summary(hand_made(tmp_path))
    none, dec, bc, knn = summary["none"], summary["decisions"], summary["bc"], summary["knn"]
    assert none["scores"] == [0, 1, 0, 1, 2] and none["half"] == 2
    assert none["cumulative_mean"] == pytest.approx([0, 0.5, 1 / 3, 0.5, 0.8])
    assert (none["first_half"], none["second_half"], none["change"]) == (0.5, 1.5, 1.0)
    assert none["vs_none"] is None and none["none_change"] == 1.0
    assert (dec["first_half"], dec["second_half"], dec["change"], dec["none_change"]) == (0.0, 3.5, 3.5, 1.0)
    assert dec["vs_none"] == pytest.approx(2.5)
    lo, hi = dec["vs_none_ci95"]
    assert lo <= 2.5 <= hi and lo < hi
    # bc: d = bc - none is 1, 1 on the first half and 1, 1 on the second: no change against none, exactly
    assert bc["games"] == ["g0", "g1", "g3", "g4"] and (bc["first_half"], bc["second_half"]) == (1.5, 2.5)
    assert bc["vs_none"] == 0.0 and bc["vs_none_ci95"] == [0.0, 0.0]
    assert (knn["half"], knn["change"], knn["none_change"], knn["vs_none"]) == (1, 0.0, 1.0, -1.0)


def test_continual_summary_without_the_control_or_enough_games(tmp_path):
    result = Comparison(config=CompareConfig(modes=["decisions"]), out_dir=tmp_path)
    result.episodes = {"decisions": episodes("decisions", [2, 1, 4])}
    only = continual_summary(result)["decisions"]
    assert (only["first_half"], only["second_half"], only["change"]) == (2.0, 4.0, 2.0)
    assert only["none_change"] is None and only["vs_none"] is None, "no none run: no control"
    result.episodes = {"decisions": episodes("decisions", [3])}
    one = continual_summary(result)["decisions"]
    assert one["half"] == 0 and one["change"] is None and one["scores"] == [3]


def test_the_report_shows_the_stream_and_plots_it(tmp_path):
    result = hand_made(tmp_path)
    result.mode_setup["bc"] = {"rows": 3, "epochs": 2, "steps": 6, "seconds": 12.0}
    table = continual_table(result)
    assert table[0][1] == "scores in stream order"
    assert table[2] == ["decisions", "0 0 3 3 4", "0.00", "3.50", "+3.50", "+1.00", table[2][-1]]
    assert table[2][-1].startswith("+2.50 [")
    report = write_report(result).read_text()
    assert "## Continual: the score along the stream" in report and "![continual.png](continual.png)" in report
    assert "one LoRA trained once before the games on the 3 decision rows" in report and "| 12 |" in report
    assert (tmp_path / "continual.png").stat().st_size > 0


# ------------------------------------------------------------------------------ settings and flags


def test_bc_is_a_mode_with_its_own_settings():
    assert MODES["bc"] == {"adapt": False}
    assert MODES["bc_decisions"] == {**MODES["decisions"]}, "bc_decisions adapts like decisions, on the bc model"
    assert CompareConfig(modes=["none", "bc"]).bc_epochs == 2
    with pytest.raises(ValidationError, match="unknown mode.*'bcx'.*'bc'"):
        CompareConfig(modes=["bcx"])
    with pytest.raises(ValidationError, match="bc_epochs"):
        CompareConfig(modes=["bc"], bc_epochs=0)


def load_bench_agent():
    spec = importlib.util.spec_from_file_location("bench_agent", ROOT / "benchmarks" / "bench_agent.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_agent_harder_and_name_write_separate_files():
    bench = load_bench_agent()
    plain = bench.parse_args([])
    assert Path(plain.json).name == "bench_agent.json" and Path(plain.work_dir).name == "default"
    args = bench.parse_args(["--harder", "--name", "20", "--modes", "none", "bc", "--test-games", "20"])
    assert Path(args.json) == bench.RESULTS / "bench_agent_harder_20.json"
    assert Path(args.work_dir) == bench.WORK / "harder_20"
    config = bench.make_config(args)
    assert (config.recipe, config.take, config.rooms, config.modes, config.test_games) == (2, 2, 6, ["none", "bc"], 20)
    assert Path(bench.parse_args(["--name", "x", "--json", "/tmp/y.json"]).json) == Path("/tmp/y.json")
    assert plain.prompt_format is None and bench.make_config(plain).prompt_format is None
    short = bench.make_config(bench.parse_args(["--prompt-format", "nosys-h1", "--bc-epochs", "3"]))
    assert short.prompt_format == DecisionFormat(system=False, history=2) == short.training_format()
    assert short.agent().prompt_format == short.prompt_format and short.bc_epochs == 3
    with pytest.raises(ValidationError, match="unknown mode"):
        bench.make_config(bench.parse_args(["--modes", "none", "behaviour"]))


BC_SETUP = {"rows": 4, "epochs": 2, "steps": 8, "seconds": 3.0}


def test_runs_of_other_modes_on_the_same_games_merge_into_one_comparison(tmp_path):
    from hullft_agent.agents.compare import merge_comparisons

    whole = hand_made(tmp_path / "whole")
    one = Comparison(config=CompareConfig(modes=["none", "bc"]), out_dir=tmp_path / "one", seconds=10.0,
                     episodes={m: whole.episodes[m] for m in ("none", "bc")}, mode_setup={"bc": BC_SETUP})
    two = Comparison(config=CompareConfig(modes=["decisions"]), out_dir=tmp_path / "two", seconds=20.0,
                     episodes={"decisions": whole.episodes["decisions"]})
    merged = merge_comparisons([one, two], tmp_path / "merged")
    assert merged.config.modes == ["none", "bc", "decisions"] and merged.seconds == 30.0
    assert merged.differences()["decisions"] == whole.differences()["decisions"]
    assert merged.mode_setup == {"bc": BC_SETUP} and (tmp_path / "merged" / "report.md").exists()
    with pytest.raises(InvalidArgumentError, match="more than one"):
        merge_comparisons([one, one], tmp_path / "again")
    other = Comparison(config=CompareConfig(modes=["decisions"], n=9), out_dir=tmp_path / "other",
                       episodes={"decisions": whole.episodes["decisions"]})
    with pytest.raises(InvalidArgumentError, match="other settings"):
        merge_comparisons([one, other], tmp_path / "again")
    shuffled = Comparison(config=CompareConfig(modes=["decisions"]), out_dir=tmp_path / "shuffled",
                          episodes={"decisions": list(reversed(whole.episodes["decisions"]))})
    with pytest.raises(InvalidArgumentError, match="other games"):
        merge_comparisons([one, shuffled], tmp_path / "again")
