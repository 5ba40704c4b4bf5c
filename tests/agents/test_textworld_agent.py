"""The TextWorld agent on a tiny model and real generated games: the loop, what it logs back to memory,
continual learning across episodes, the per_task ledger, faults, the comparison and the `demo` command.

Two small tw-cooking games (one train, one test) are generated once for the module (about 2 s each).
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model, build_tiny_tokenizer

from hullft_agent import cli
from hullft_agent.adapter import TestTimeAdapter
from hullft_agent.agents import compare as compare_module
from hullft_agent.agents.compare import (
    CompareConfig,
    load_comparison,
    paired_summary,
    run_comparison,
)
from hullft_agent.agents.report import summary_text
from hullft_agent.agents.textworld import AgentConfig, AgentInterrupted, TextWorldAgent
from hullft_agent.config import AdapterConfig, FinetuneConfig, LoRAConfig, SelectionConfig
from hullft_agent.envs import textworld as tw_env
from hullft_agent.envs.textworld import generate_games, log_episodes, play_episode
from hullft_agent.memory import TrajectoryMemory
from hullft_agent.memory.testing import HashingEmbedder
from hullft_agent.models import LoadedModel
from hullft_agent.runtime import Runtime
from hullft_agent.runtime import engine as engine_module

SETTINGS = CompareConfig().cooking().model_copy(update={"max_steps": 40})  # the demo's game settings
TOKENIZER = build_tiny_tokenizer()
DIM = 32


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tw-cache")


@pytest.fixture(scope="module")
def train_game(cache) -> Path:
    return generate_games("train", 1, SETTINGS, cache, progress=False)[0]


@pytest.fixture(scope="module")
def test_game(cache) -> Path:
    return generate_games("test", 1, SETTINGS, cache, progress=False)[0]


@pytest.fixture()
def memory(tmp_path, train_game) -> TrajectoryMemory:
    memory = TrajectoryMemory.open(tmp_path / "memory", embedder=HashingEmbedder(DIM), granularity="window", window=4)
    log_episodes(memory, [play_episode(train_game, "expert")])
    return memory


def make_runtime(memory: TrajectoryMemory | None, *, mode: str = "per_query", n: int = 4) -> Runtime:
    model = build_tiny_model(len(TOKENIZER), max_positions=4096)
    if memory is None:
        return Runtime(model, TOKENIZER, name="tiny-llama")
    config = AdapterConfig(
        selection=SelectionConfig(n=n, k=50),
        finetune=FinetuneConfig(lr=0.05, max_length=32, lora=LoRAConfig(r=4, alpha=8)),
        mode=mode,
        incremental=True,
    )
    adapter = TestTimeAdapter(model, TOKENIZER, embedder=HashingEmbedder(DIM), source=memory, config=config)
    return Runtime(adapter=adapter, memory=memory, name="tiny-llama")


def tiny_loaded() -> LoadedModel:
    model = build_tiny_model(len(TOKENIZER), max_positions=4096)
    return LoadedModel(model=model, tokenizer=TOKENIZER, device=torch.device("cpu"), dtype=torch.float32,
                       source="tiny-llama")


# ------------------------------------------------------------------------------------ the agent loop


def lock_is_free(lock) -> bool:
    """Whether another thread can take the (re-entrant) lock right now."""
    got: list[bool] = []

    def take() -> None:
        ok = lock.acquire(blocking=False)
        got.append(ok)
        if ok:
            lock.release()

    thread = threading.Thread(target=take)
    thread.start()
    thread.join()
    return got == [True]


def episode_rows(memory: TrajectoryMemory, episode_id: str) -> list[dict]:
    rows = memory.table.search().where(f"episode_id = '{episode_id}'").limit(1000).to_list()
    for row in rows:
        row["metadata"] = json.loads(row["metadata"])
    return sorted(rows, key=lambda r: r["step"])


def test_agent_plays_a_few_steps_and_logs_them_back(memory, test_game):
    agent = TextWorldAgent(make_runtime(memory), AgentConfig(max_steps=3, history=1))
    seen = []
    result = agent.play(test_game, label="per_query", on_step=seen.append)
    assert result.outcome == "max_steps" and result.moves == 3 and seen == result.steps
    assert result.episode_id.startswith(f"{result.game}/agent/per_query-")
    for step in result.steps:
        assert step.n_admissible > 1 and step.adapted and step.trained == 4 and step.act_s > 0
        assert math.isfinite(step.action_bpb) and step.action_bytes > 0
        assert step.expert_action is None or math.isfinite(step.expert_bpb)
    rows = episode_rows(memory, result.episode_id)
    assert len(rows) == result.logged_rows == 7  # 3 observations + 3 commands + the last observation
    assert [r["step"] for r in rows] == list(range(7))
    infos = [r["metadata"]["_window"] for r in rows]
    assert [i["last_kind"] for i in infos] == ["observation", "action"] * 3 + ["observation"]
    assert [i["last_text"] for i in infos[1::2]] == [s.action for s in result.steps]
    assert "cookbook" in infos[0]["last_text"].lower()  # the first observation carries the objective
    assert {r["task"] for r in rows} == {result.game}
    assert {r["outcome"] for r in rows} == {"max_steps"} and {r["reward"] for r in rows} == {float(result.score)}
    metas = [{k: v for k, v in r["metadata"].items() if k != "_window"} for r in rows]
    assert metas[0:-1:2] == [{"role": "user", "source": "hullft_agent"}] * 3
    assert metas[-1] == {"policy": "agent", "agent": "per_query", "role": "user", "source": "hullft_agent"}
    for index, (meta, step) in enumerate(zip(metas[1::2], result.steps, strict=True)):
        assert meta["role"] == "assistant" and meta["source"] == "hullft_agent" and meta["model"] == "tiny-llama"
        assert (meta["policy"], meta["agent"], meta["step"]) == ("agent", "per_query", index)
        assert meta["chosen_by"] == "loglik" and meta["n_choices"] == step.n_admissible
        assert 0 <= meta["choice_index"] < step.n_admissible
        assert meta["adapted"] is True and len(meta["selected_ids"]) == len(set(meta["selected_ids"])) > 0


def test_each_step_sends_the_runtime_a_call_of_game_text_with_the_agents_options(memory, test_game, monkeypatch):
    runtime = make_runtime(memory)
    calls = []
    real_choose = runtime.choose

    def spy(call, choices, **kwargs):
        calls.append((call, list(choices), kwargs))
        return real_choose(call, choices, **kwargs)

    monkeypatch.setattr(runtime, "choose", spy)
    config = AgentConfig(max_steps=2, history=1, temperature=0.5, seed=3)
    result = TextWorldAgent(runtime, config, mode="per_task", n=2).play(test_game, label="probe")
    (first, admissible, options), (second, _, _) = calls
    assert options == {"strategy": "loglik", "scoring": config.scoring, "temperature": 0.5}
    assert [m["role"] for m in first.conversation] == ["system", "user", "system"]
    assert [m["role"] for m in second.conversation] == ["system", "user", "assistant", "user", "system"]
    assert first.conversation[0]["content"] == config.system_prompt
    assert "Admissible commands: " + "; ".join(admissible) in first.conversation[-1]["content"]
    observations = [m["content"] for m in second.conversation if m["role"] == "user"]
    # the adaptation context and the logged input are game text only (no system prompt, no command list)
    assert second.context == "\n".join([observations[0], result.steps[0].action, observations[1]])
    assert second.log_inputs == [{"kind": "observation", "text": observations[1],
                                  "metadata": {"role": "user", "source": "hullft_agent"}}]
    assert (second.task, second.episode_id, second.log_metadata) == (
        result.game, result.episode_id, {"policy": "agent", "agent": "probe", "step": 1})
    assert second.overrides.model_dump(exclude_none=True) == {"n": 2, "mode": "per_task"} and second.adapt
    assert first.sampling.seed != second.sampling.seed  # one seed per step, the same in every mode


def test_later_episodes_learn_from_earlier_ones_never_from_themselves(tmp_path, test_game):
    memory = TrajectoryMemory.open(tmp_path / "empty", embedder=HashingEmbedder(DIM), granularity="window")
    agent = TextWorldAgent(make_runtime(memory), AgentConfig(max_steps=2, history=1))
    first = agent.play(test_game)
    assert all(s.skip_reason and "no candidates" in s.skip_reason for s in first.steps)  # only its own rows
    second = agent.play(test_game)
    assert all(s.adapted for s in second.steps)
    commands = [r for r in episode_rows(memory, second.episode_id) if r["metadata"]["_window"]["last_kind"] == "action"]
    assert len(commands) == 2
    for row in commands:  # each logged command says which memory rows its adaptation trained on
        assert {r["episode_id"] for r in memory.get(row["metadata"]["selected_ids"])} == {first.episode_id}


def test_per_task_agent_trains_only_what_its_game_adapter_lacks(memory, test_game):
    result = TextWorldAgent(make_runtime(memory, mode="per_task", n=6), AgentConfig(max_steps=4, history=1)).play(test_game)
    assert result.steps[0].trained == result.steps[0].selected == 6
    assert all(s.trained <= s.selected for s in result.steps)
    assert sum(s.trained for s in result.steps) < sum(s.selected for s in result.steps)
    assert all(s.adapted for s in result.steps)


def test_keyboard_interrupt_logs_finished_steps_and_the_next_run_starts_cleanly(memory, test_game, monkeypatch):
    runtime = make_runtime(memory)
    probe = torch.tensor([TOKENIZER("open fridge")["input_ids"]])
    with torch.no_grad():
        base = runtime.adapter.model(probe).logits
    real = engine_module.score_continuations
    calls = {"n": 0}

    def interrupt_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "score_continuations", interrupt_third)
    agent = TextWorldAgent(runtime, AgentConfig(max_steps=6, history=1))
    with pytest.raises(AgentInterrupted) as info:
        agent.play(test_game)
    partial = info.value.result
    assert isinstance(info.value, KeyboardInterrupt)
    assert partial.outcome == "interrupted" and partial.moves == 2 and "interrupted after 2" in partial.reason
    rows = episode_rows(memory, partial.episode_id)
    assert len(rows) == 4 and {r["outcome"] for r in rows} == {"interrupted"}  # two whole steps, nothing half
    assert lock_is_free(runtime.lock)  # the model lock was released
    with torch.no_grad():
        assert torch.equal(base, runtime.adapter.model(probe).logits)  # the interrupted adaptation was undone
    monkeypatch.setattr(engine_module, "score_continuations", real)
    again = agent.play(test_game)
    assert again.outcome == "max_steps" and again.episode_id != partial.episode_id
    assert len(episode_rows(memory, again.episode_id)) == 13
    assert len(episode_rows(memory, partial.episode_id)) == 4


def test_an_empty_admissible_list_ends_the_episode_with_a_reason(memory, test_game, monkeypatch):
    real_start = tw_env.start_game

    class NoCommandsAfterOneStep:
        def __init__(self, env):
            self.env = env

        def step(self, command):
            state, reward, done = self.env.step(command)
            state["admissible_commands"] = []
            return state, reward, done

        def close(self):
            self.env.close()

    def start(path):
        env, state = real_start(path)
        return NoCommandsAfterOneStep(env), state

    monkeypatch.setattr(tw_env, "start_game", start)
    result = TextWorldAgent(make_runtime(memory), AgentConfig(max_steps=5, history=1)).play(test_game)
    assert result.outcome == "no_commands" and result.moves == 1
    assert "empty admissible-command list after 1 commands" in result.reason
    assert {r["outcome"] for r in episode_rows(memory, result.episode_id)} == {"no_commands"}


def test_a_game_that_cannot_start_is_reported_and_writes_nothing(memory, tmp_path):
    bad = tmp_path / "broken.z8"
    bad.write_bytes(b"\x00" * 10)
    rows = memory.count()
    agent = TextWorldAgent(make_runtime(memory))
    for game in (bad, tmp_path / "missing.z8"):
        result = agent.play(game)
        assert result.outcome == "error" and result.reason.startswith("cannot start the game")
        assert result.moves == 0 and result.logged_rows == 0
    assert memory.count() == rows


# ------------------------------------------------------------------------------------ comparison and CLI


def test_comparison_writes_tables_report_and_plots_and_skips_a_broken_game(tmp_path, cache, monkeypatch):
    bad = tmp_path / "broken.z8"
    bad.write_bytes(b"not a story file")
    config = CompareConfig(modes=["none", "per_task"], train_games=1, test_games=1, explore_episodes=1, n=4, k=20,
                           lr=0.05, max_length=32, max_steps=2, history=1)
    loaded = tiny_loaded()
    result = run_comparison(config, tmp_path / "out", model=loaded, embedder=HashingEmbedder(DIM), game_cache=cache,
                            progress=False, extra_games=[bad])
    assert not result.interrupted and set(result.episodes) == {"none", "per_task"}
    for mode, episodes in result.episodes.items():
        assert [e.outcome == "error" for e in episodes] == [False, True], mode
        assert episodes[0].moves == 2
    assert all(not s.adapted for s in result.episodes["none"][0].steps)
    assert all(s.adapted for s in result.episodes["per_task"][0].steps)
    # each mode logged into its own copy of the training memory
    none_memory = TrajectoryMemory.open(tmp_path / "out" / "memory" / "none", embedder=HashingEmbedder(DIM),
                                        namespace="textworld")
    agent_eps = {e.episode_id for e in none_memory.episodes() if "/agent/" in e.episode_id}
    assert agent_eps == {result.episodes["none"][0].episode_id}
    text = summary_text(result)
    assert "cannot start" in text and "per_task - none:" in text and "BPB chosen commands" in text
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Per game" in report and "## Bits per byte" in report and "![scores.png]" in report
    assert (tmp_path / "out" / "scores.png").stat().st_size > 0 and (tmp_path / "out" / "latency.png").exists()
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["totals"]["per_task"]["games"] == 1 and saved["totals"]["per_task"]["errors"] == 1


def test_decision_mode_learns_from_expert_decisions_and_logs_its_own(tmp_path, cache):
    config = CompareConfig(modes=["decisions"], train_games=1, test_games=1, explore_episodes=0, n=4, k=20,
                           lr=0.05, max_length=32, decision_max_length=48, max_steps=2, history=1)
    result = run_comparison(config, tmp_path / "out", model=tiny_loaded(), embedder=HashingEmbedder(DIM),
                            game_cache=cache, progress=False)
    steps = result.episodes["decisions"][0].steps
    assert steps and all(s.adapted and s.trained + s.selected > 0 for s in steps)
    memory = TrajectoryMemory.open(tmp_path / "out" / "memory" / "decisions", embedder=HashingEmbedder(DIM),
                                   namespace="textworld")
    rows = memory.table.search().where("kind = 'decision'").limit(1000).to_list()
    experts = [r for r in rows if json.loads(r["metadata"])["actor"] == "expert"]
    own = [r for r in rows if json.loads(r["metadata"])["actor"] == "agent"]
    assert experts and all(r["outcome"] == "won" for r in experts), "the walkthrough decisions of the training game"
    assert len(own) == len(steps), "the agent logged each of its decisions"
    assert all(r["outcome"] == result.episodes["decisions"][0].outcome for r in own)
    prompt = json.loads(own[0]["metadata"])["prompt"]
    assert [m["role"] for m in prompt] == ["user"], "the first step's prompt as answered: nosys-h1, no earlier step"
    assert config.training_format() == config.prompt_format, "the decisions train in the format the agent answers"


def test_bc_decisions_adapts_the_behaviour_cloned_model_in_the_agents_prompt_format(tmp_path, cache):
    from hullft_agent.config import DECISION_FORMATS

    config = CompareConfig(modes=["bc", "bc_decisions"], train_games=1, test_games=1, explore_episodes=0, n=4, k=20,
                           lr=0.05, max_length=32, decision_max_length=48, max_steps=2, history=1,
                           prompt_format=DECISION_FORMATS["nosys-h0"])
    result = run_comparison(config, tmp_path / "out", model=tiny_loaded(), embedder=HashingEmbedder(DIM),
                            game_cache=cache, progress=False)
    bc, warm = result.episodes["bc"][0], result.episodes["bc_decisions"][0]
    assert result.mode_setup["bc_decisions"] == result.mode_setup["bc"], "one training, the setup of both modes"
    assert "answers the prompt trimmed to nosys-h0" in (tmp_path / "out" / "report.md").read_text()
    assert all(not s.adapted for s in bc.steps) and all(s.adapted and s.selected > 0 for s in warm.steps)
    # the same model before adapting: bc and bc_decisions differ at the first state only by the adaptation
    assert warm.steps[0].expert_bpb != pytest.approx(bc.steps[0].expert_bpb, rel=1e-6)
    memory = TrajectoryMemory.open(tmp_path / "out" / "memory" / "bc_decisions", embedder=HashingEmbedder(DIM),
                                   namespace="textworld")
    rows = [json.loads(r["metadata"]) for r in memory.table.search().where("kind = 'decision'").limit(1000).to_list()]
    own = [m for m in rows if m["actor"] == "agent"]
    assert len(own) == len(warm.steps) and all([m["role"] for m in m_["prompt"]] == ["user"] for m_ in own), (
        "the agent logs the prompt its model answered: the observation alone in nosys-h0")


def test_bc_mode_trains_once_on_the_expert_decisions_then_plays_without_adapting(tmp_path, cache, monkeypatch):
    import hullft_agent.finetune as finetune_module

    real = finetune_module.behaviour_cloning
    calls = []

    def spy(model, tokenizer, rows, config, **kwargs):
        calls.append((rows, config, kwargs))
        return real(model, tokenizer, rows, config, **kwargs)

    monkeypatch.setattr(finetune_module, "behaviour_cloning", spy)
    config = CompareConfig(modes=["none", "bc"], train_games=1, test_games=2, explore_episodes=0, n=4, k=20,
                           lr=0.05, max_length=32, decision_max_length=48, max_steps=2, history=1)
    result = run_comparison(config, tmp_path / "out", model=tiny_loaded(), embedder=HashingEmbedder(DIM),
                            game_cache=cache, progress=False)
    assert len(calls) == 1, "one training for the whole stream of games"
    rows, finetune, kwargs = calls[0]
    assert rows and all(r["kind"] == "decision" and r["outcome"] == "won" and r["metadata"]["actor"] == "expert"
                        for r in rows)
    assert (finetune.lr, finetune.max_length, kwargs["epochs"]) == (0.05, 48, 2)
    setup = result.mode_setup["bc"]
    assert setup["rows"] == len(rows) and setup["steps"] == 2 * len(rows) and setup["seconds"] > 0
    none, bc = result.episodes["none"], result.episodes["bc"]
    assert len(bc) == 2 and all(s.act_s > 0 for e in bc for s in e.steps)
    assert all(not s.adapted and s.adapt_s == 0 and s.trained == s.selected == 0 for e in bc for s in e.steps)
    # the first state of a game is the same in every mode: the trained adapter scores the expert's command differently
    assert bc[0].steps[0].expert_action == none[0].steps[0].expert_action is not None
    assert bc[0].steps[0].expert_bpb != pytest.approx(none[0].steps[0].expert_bpb, rel=1e-6)
    text = summary_text(result)
    assert "setup s (once)" in text and "continual" in text and "bc - none:" in text
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["mode_setup"]["bc"]["steps"] == setup["steps"] and saved["continual"]["bc"]["scores"] == [
        e.score for e in bc]
    assert load_comparison(tmp_path / "out").mode_setup == result.mode_setup


def test_an_interrupted_comparison_still_writes_its_report(tmp_path, cache):
    config = CompareConfig(modes=["none", "per_task"], train_games=1, test_games=1, explore_episodes=0,
                           max_length=32, max_steps=1, history=0)
    loaded = tiny_loaded()

    def stop(mode, episode):
        raise KeyboardInterrupt

    result = run_comparison(config, tmp_path / "out", model=loaded, embedder=HashingEmbedder(DIM), game_cache=cache,
                            progress=False, on_episode=stop)
    assert result.interrupted and list(result.episodes) == ["none"]
    assert "**Interrupted**" in (tmp_path / "out" / "report.md").read_text()
    assert json.loads((tmp_path / "out" / "results.json").read_text())["interrupted"] is True


def test_demo_command_prints_the_tables_and_the_report_path(tmp_path, cache, monkeypatch, capsys):
    folder = tmp_path / "tiny-model"
    build_tiny_model(len(TOKENIZER), max_positions=4096).save_pretrained(folder)
    TOKENIZER.save_pretrained(folder)
    monkeypatch.setattr(cli, "_load_embedder", lambda args: HashingEmbedder(DIM))
    code = cli.main(["demo", "--model", str(folder), "--out", str(tmp_path / "demo"), "--game-cache", str(cache),
                     "--train-games", "1", "--test-games", "1", "--max-steps", "2", "--n", "2", "--k", "10",
                     "--max-length", "32", "--history", "1", "--no-progress", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "per game" in out and "totals" in out and "bits per byte" in out and "decisions - none:" in out
    assert f"report: {tmp_path / 'demo' / 'report.md'}" in out
    assert (tmp_path / "demo" / "report.md").is_file()


def test_demo_flags_left_out_keep_the_comparisons_defaults(tmp_path, monkeypatch, capsys):
    seen = []

    def fake_run(config, out_dir, **kwargs):
        seen.append(config)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_load_embedder", lambda args: HashingEmbedder(DIM))
    monkeypatch.setattr("hullft_agent.models.load_model", lambda config: tiny_loaded())
    monkeypatch.setattr(compare_module, "run_comparison", fake_run)
    assert cli.main(["demo", "--out", str(tmp_path)]) == 130
    assert cli.main(["demo", "--out", str(tmp_path), "--seed", "4", "--modes", "none", "knn"]) == 130
    assert seen == [CompareConfig(), CompareConfig(seed=4, modes=["none", "knn"])]
    assert cli.main(["demo", "--out", str(tmp_path), "--modes", "none", "bc"]) == 130
    assert seen[-1] == CompareConfig(modes=["none", "bc"])
    assert cli.main(["demo", "--out", str(tmp_path), "--modes", "fast"]) == 2
    assert "unknown mode(s) ['fast']" in capsys.readouterr().err


def test_paired_summary_of_the_readme_demo():
    summary = paired_summary([0, 1, 1], seed=0)  # per_task - none on the 3 games of README's demo
    assert summary["ci95"] == [0.0, 1.0] and (summary["better"], summary["worse"], summary["games"]) == (2, 0, 3)
    assert summary["mean"] == pytest.approx(2 / 3) and summary["sd"] == pytest.approx(0.57735, abs=1e-5)


def test_agent_takes_adapt_and_adaptation_overrides_and_refuses_other_options():
    runtime = make_runtime(None)
    assert TextWorldAgent(runtime, n=3, mode="per_task", adapt=False).overrides.model_dump(exclude_none=True) == {
        "n": 3, "mode": "per_task"}
    for option in ("task", "n_select", "strategy"):
        with pytest.raises(TypeError, match=rf"unknown call option.*{option}.*set by the agent"):
            TextWorldAgent(runtime, **{option: "x"})
    with pytest.raises(TypeError, match="Runtime"):
        TextWorldAgent(object())


def test_a_saved_comparison_loads_back_and_renders_the_same_tables(tmp_path, cache):
    config = CompareConfig(modes=["none"], train_games=1, test_games=1, explore_episodes=0, max_length=32,
                           max_steps=2, history=0)
    loaded = tiny_loaded()
    result = run_comparison(config, tmp_path / "out", model=loaded, embedder=HashingEmbedder(DIM), game_cache=cache,
                            progress=False)
    again = load_comparison(tmp_path / "out")
    assert summary_text(again) == summary_text(result) and again.episodes["none"][0].steps == result.episodes["none"][0].steps


def test_walkthrough_states_answer_with_the_walkthrough_or_the_engines_plan(train_game):
    from hullft_agent.agents.walkthroughs import walkthrough_states

    walk = walkthrough_states(train_game)
    engine = walkthrough_states(train_game, answer="engine")
    assert [s.observation for s in walk] == [s.observation for s in engine], "the same states, in walkthrough order"
    assert all(s.expert in s.admissible for s in walk + engine)
    assert walk[0].expert == "inventory" and engine[0].expert != "inventory", "the engine skips the no-op opener"


def test_the_prompt_keeps_the_recipe_once_the_cookbook_is_read(train_game):
    from hullft_agent.agents.textworld import read_recipe
    from hullft_agent.agents.walkthroughs import state_prompt, walkthrough_states

    states = walkthrough_states(train_game)
    read_at = next(i for i, s in enumerate(states) if s.expert == "examine cookbook")
    recipe = read_recipe(states[read_at + 1].observation)
    assert recipe and recipe.startswith("ingredients: ") and "; directions: " in recipe and "prepare meal" in recipe
    keep, drop = AgentConfig(history=1, keep_recipe=True), AgentConfig(history=1)
    for state in states[: read_at + 2]:  # before the cookbook, and the step that shows it: the observation alone
        assert state_prompt(keep, state)[-2]["content"] == state.observation
    for state in states[read_at + 2:]:  # later steps, long after the 1-step history forgot the cookbook
        assert state_prompt(keep, state)[-2]["content"] == f"{state.observation}\n\nRecipe: {recipe}"
        assert state_prompt(drop, state)[-2]["content"] == state.observation
    assert read_recipe("Ingredients:\ncarrot\n\nYou see a table.") is None, "a recipe has ingredients and directions"


@pytest.mark.parametrize("answers", ["walkthrough", "engine"])
def test_expert_decisions_answer_as_configured_and_show_the_recipe_once_read(tmp_path, train_game, answers):
    from hullft_agent.agents.walkthroughs import walkthrough_states

    memory = TrajectoryMemory.open(tmp_path / "m", embedder=HashingEmbedder(DIM), granularity="window", window=4)
    compare_module._add_expert_decisions(memory, [train_game], CompareConfig(expert_answers=answers, keep_recipe=True))
    rows = sorted((json.loads(r["metadata"]) for r in memory.table.search().where("kind = 'decision'").to_list()),
                  key=lambda m: m["walkthrough_step"])
    assert [m["answer"] for m in rows] == [s.expert for s in walkthrough_states(train_game, answer=answers)]
    assert ("examine cookbook" in [m["answer"] for m in rows]) == (answers == "walkthrough")
    read_at = next(i for i, s in enumerate(walkthrough_states(train_game)) if s.expert == "examine cookbook")
    observed = [[x for x in m["prompt"] if x["role"] == "user"][-1]["content"] for m in rows]
    assert all(("Recipe: ingredients:" in text) == (i > read_at + 1) for i, text in enumerate(observed))


def test_avoid_repeats_never_offers_the_last_commands_again_unless_nothing_else_is_left(test_game, monkeypatch):
    runtime = make_runtime(None)
    offered: list[list[str]] = []
    real_choose = runtime.choose

    def spy(call, choices, **kwargs):
        offered.append(list(choices))
        return real_choose(call, choices, **kwargs)

    monkeypatch.setattr(runtime, "choose", spy)
    config = AgentConfig(max_steps=8, temperature=0, avoid_repeats=2, log=False)
    result = TextWorldAgent(runtime, config, adapt=False).play(test_game)
    actions = [s.action for s in result.steps]
    assert len(actions) >= 3
    for i, choices in enumerate(offered):
        assert not set(actions[max(0, i - 2):i]) & set(choices), f"step {i} offered a command it just played"
    assert all(a != b for a, b in zip(actions, actions[1:], strict=False)), "a greedy agent no longer repeats itself"


def test_prompt_format_trims_what_the_model_answers_but_not_the_adaptation_context(test_game, monkeypatch):
    from hullft_agent.config import DECISION_FORMATS

    runtime = make_runtime(None)
    calls = []
    real_choose = runtime.choose

    def spy(call, choices, **kwargs):
        calls.append(call)
        return real_choose(call, choices, **kwargs)

    monkeypatch.setattr(runtime, "choose", spy)
    short = AgentConfig(max_steps=4, history=3, log=False, prompt_format=DECISION_FORMATS["nosys-h0"])
    TextWorldAgent(runtime, short, adapt=False).play(test_game)
    whole = AgentConfig(max_steps=4, history=3, log=False)
    TextWorldAgent(runtime, whole, adapt=False).play(test_game)
    trimmed, full = calls[:4], calls[4:8]
    for step, (a, b) in enumerate(zip(trimmed, full, strict=True)):
        assert [m["role"] for m in a.conversation] == ["user"], "nosys-h0: the observation alone"
        assert a.conversation[0] == b.conversation[-2], "the same observation the whole prompt ends with"
        assert a.context == b.context, "selection still sees the recent steps"
        assert b.conversation[0]["role"] == "system" and len(b.conversation) == 3 + 2 * min(step, 3)
    assert "\n" in full[-1].context, "the context of a later step holds earlier turns too"
