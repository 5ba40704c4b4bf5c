"""The TextWorld agent on a tiny model and real generated games: command choice, the loop, logging
back to memory, continual learning across episodes, the per_task ledger, faults, the comparison and
the `demo` command.

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
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_hullft import ChatHullFT, get_adaptation_report, match_answer
from langchain_hullft._messages import to_conversation
from langchain_hullft.textworld_agent import AgentConfig, AgentInterrupted, TextWorldAgent
from langchain_hullft.textworld_compare import CompareConfig, run_comparison, summary_text

from hullft_agent import cli
from hullft_agent.adapter import TestTimeAdapter
from hullft_agent.config import AdapterConfig, FinetuneConfig, LoRAConfig, SelectionConfig
from hullft_agent.envs import textworld as tw_env
from hullft_agent.envs.textworld import generate_games, log_episodes, play_episode
from hullft_agent.memory import TrajectoryMemory
from hullft_agent.memory.testing import HashingEmbedder
from hullft_agent.models import LoadedModel
from hullft_agent.runtime import engine as engine_module
from hullft_agent.runtime.prompt import prompt_ids

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


def make_chat(memory: TrajectoryMemory | None, *, mode: str = "per_query", n: int = 4) -> ChatHullFT:
    model = build_tiny_model(len(TOKENIZER), max_positions=4096)
    if memory is None:
        return ChatHullFT(llm=model, tokenizer=TOKENIZER, temperature=0.0, max_tokens=8, model="tiny-llama")
    config = AdapterConfig(
        selection=SelectionConfig(n=n, k=50),
        finetune=FinetuneConfig(lr=0.05, max_length=32, lora=LoRAConfig(r=4, alpha=8)),
        mode=mode,
        incremental=True,
    )
    adapter = TestTimeAdapter(model, TOKENIZER, embedder=HashingEmbedder(DIM), source=memory, config=config)
    return ChatHullFT(adapter=adapter, memory=memory, temperature=0.0, max_tokens=8, model="tiny-llama")


def tiny_loaded() -> LoadedModel:
    model = build_tiny_model(len(TOKENIZER), max_positions=4096)
    return LoadedModel(model=model, tokenizer=TOKENIZER, device=torch.device("cpu"), dtype=torch.float32,
                       source="tiny-llama")


def direct_logprobs(model, prompt: list[int], continuation: list[int]) -> list[float]:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + continuation])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return [float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(continuation)]


MESSAGES = [SystemMessage("play the game"), HumanMessage("You are in a kitchen. There is a closed fridge.")]
CHOICES = ["open fridge", "take knife from table", "go north", "examine cookbook", "eat meal", "look"]


# ------------------------------------------------------------------------------------ command choice


@pytest.mark.parametrize("scoring", ["sum", "mean"])
def test_choose_picks_the_most_likely_command_as_a_direct_computation_does(scoring):
    chat = make_chat(None)
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
    chat = make_chat(None)
    calls = []
    handle = chat.llm.register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
    choices = [f"take item {i} from the fridge" for i in range(30)]
    chat.choose(MESSAGES, choices, log=False)
    handle.remove()
    assert len(calls) == 2  # the prompt once, then all 30 commands packed into one sequence


def test_choose_adapts_logs_and_restores_like_a_normal_call(memory):
    chat = make_chat(memory)
    probe = torch.tensor([TOKENIZER("open fridge")["input_ids"]])
    with torch.no_grad():
        base = chat.adapter.model(probe).logits
    version = memory.version
    result = chat.choose(MESSAGES, CHOICES, task="game", episode_id="ep-1", log_metadata={"policy": "agent"})
    report = get_adaptation_report(result.message)
    assert report is not None and report.adapted and result.report.selected_ids == report.selected_ids
    assert {"prompt", "adapt", "score", "log"} <= set(result.message.response_metadata["hullft"]["timings"])
    assert result.message.response_metadata["choice"]["text"] == result.text
    assert memory.version == version + 1  # the observation and the command: one commit
    rows = sorted(memory.get(result.message.response_metadata["hullft"]["logged_ids"]), key=lambda r: r["step"])
    assert [r["kind"] for r in rows] == ["window", "window"]
    assert rows[-1]["metadata"]["_window"]["last_text"] == result.text
    assert rows[-1]["metadata"]["policy"] == "agent" and rows[-1]["metadata"]["chosen_by"] == "loglik"
    with torch.no_grad():
        assert torch.equal(base, chat.adapter.model(probe).logits)  # per_query: base model restored


def test_choose_rejects_bad_choices_before_the_model_runs():
    chat = make_chat(None)
    with pytest.raises(ValueError, match="choices is empty"):
        chat.choose(MESSAGES, [])
    with pytest.raises(ValueError, match="repeats"):
        chat.choose(MESSAGES, ["look", "look"])
    with pytest.raises(TypeError, match="list of strings"):
        chat.choose(MESSAGES, "look")
    with pytest.raises(ValueError, match="scoring"):
        chat.choose(MESSAGES, ["look"], scoring="max")


def test_generated_answer_that_names_no_command_falls_back_to_the_best_scored(caplog):
    chat = make_chat(None)
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
    chat = make_chat(memory)
    agent = TextWorldAgent(chat, AgentConfig(max_steps=3, history=1))
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


def test_later_episodes_learn_from_earlier_ones_never_from_themselves(tmp_path, test_game):
    memory = TrajectoryMemory.open(tmp_path / "empty", embedder=HashingEmbedder(DIM), granularity="window")
    chat = make_chat(memory)
    agent = TextWorldAgent(chat, AgentConfig(max_steps=2, history=1))
    reports = []
    original = chat.adapter.adapt

    def spy(context, **kwargs):
        report = original(context, **kwargs)
        reports.append((kwargs["episode_id"], report))
        return report

    chat.adapter.adapt = spy
    first = agent.play(test_game)
    assert all(s.skip_reason and "no candidates" in s.skip_reason for s in first.steps)  # only its own rows
    second = agent.play(test_game)
    assert all(s.adapted for s in second.steps)
    for episode_id, report in reports:
        selected = {r["episode_id"] for r in memory.get(report.selected_ids)}
        assert episode_id not in selected
        if episode_id == second.episode_id:
            assert selected == {first.episode_id}


def test_per_task_agent_trains_only_what_its_game_adapter_lacks(memory, test_game):
    chat = make_chat(memory, mode="per_task", n=6)
    result = TextWorldAgent(chat, AgentConfig(max_steps=4, history=1)).play(test_game)
    assert result.steps[0].trained == result.steps[0].selected == 6
    assert all(s.trained <= s.selected for s in result.steps)
    assert sum(s.trained for s in result.steps) < sum(s.selected for s in result.steps)
    assert all(s.adapted for s in result.steps)


def test_keyboard_interrupt_logs_finished_steps_and_the_next_run_starts_cleanly(memory, test_game, monkeypatch):
    chat = make_chat(memory)
    probe = torch.tensor([TOKENIZER("open fridge")["input_ids"]])
    with torch.no_grad():
        base = chat.adapter.model(probe).logits
    real = engine_module.score_continuations
    calls = {"n": 0}

    def interrupt_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "score_continuations", interrupt_third)
    agent = TextWorldAgent(chat, AgentConfig(max_steps=6, history=1))
    with pytest.raises(AgentInterrupted) as info:
        agent.play(test_game)
    partial = info.value.result
    assert isinstance(info.value, KeyboardInterrupt)
    assert partial.outcome == "interrupted" and partial.moves == 2 and "interrupted after 2" in partial.reason
    rows = episode_rows(memory, partial.episode_id)
    assert len(rows) == 4 and {r["outcome"] for r in rows} == {"interrupted"}  # two whole steps, nothing half
    assert lock_is_free(chat.lock)  # the model lock was released
    with torch.no_grad():
        assert torch.equal(base, chat.adapter.model(probe).logits)  # the interrupted adaptation was undone
    monkeypatch.setattr(engine_module, "score_continuations", real)
    again = agent.play(test_game)
    assert again.outcome == "max_steps" and again.episode_id != partial.episode_id
    assert len(episode_rows(memory, again.episode_id)) == 13
    assert len(episode_rows(memory, partial.episode_id)) == 4


def test_an_empty_admissible_list_ends_the_episode_with_a_reason(memory, test_game, monkeypatch):
    real_start = tw_env._start

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

    monkeypatch.setattr(tw_env, "_start", start)
    result = TextWorldAgent(make_chat(memory), AgentConfig(max_steps=5, history=1)).play(test_game)
    assert result.outcome == "no_commands" and result.moves == 1
    assert "empty admissible-command list after 1 commands" in result.reason
    assert {r["outcome"] for r in episode_rows(memory, result.episode_id)} == {"no_commands"}


def test_a_game_that_cannot_start_is_reported_and_writes_nothing(memory, tmp_path):
    bad = tmp_path / "broken.z8"
    bad.write_bytes(b"\x00" * 10)
    rows = memory.count()
    agent = TextWorldAgent(make_chat(memory))
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
    assert "per game" in out and "totals" in out and "bits per byte" in out and "per_task - none:" in out
    assert f"report: {tmp_path / 'demo' / 'report.md'}" in out
    assert (tmp_path / "demo" / "report.md").is_file()


def test_agent_refuses_options_it_sets_itself():
    with pytest.raises(TypeError, match="set by the agent"):
        TextWorldAgent(make_chat(None), task="x")
    with pytest.raises(TypeError, match="ChatHullFT"):
        TextWorldAgent(object())


def test_choice_temperature_draws_from_the_scores_softmax_reproducibly():
    chat = make_chat(None)
    greedy = chat.choose(MESSAGES, CHOICES, log=False)
    probs = torch.softmax(torch.tensor(greedy.scores, dtype=torch.float64) / 2.0, dim=0)
    draws = [chat.choose(MESSAGES, CHOICES, log=False, choice_temperature=2.0, seed=s).index for s in range(150)]
    freq = torch.bincount(torch.tensor(draws), minlength=len(CHOICES)).double() / len(draws)
    assert float((freq - probs).abs().max()) < 0.12
    assert chat.choose(MESSAGES, CHOICES, log=False, choice_temperature=2.0, seed=7).index == draws[7]
    with pytest.raises(ValueError, match="choice_temperature"):
        chat.choose(MESSAGES, CHOICES, choice_temperature=-1)


def test_a_saved_comparison_loads_back_and_renders_the_same_tables(tmp_path, cache):
    from langchain_hullft.textworld_compare import load_comparison

    config = CompareConfig(modes=["none"], train_games=1, test_games=1, explore_episodes=0, max_length=32,
                           max_steps=2, history=0)
    loaded = tiny_loaded()
    result = run_comparison(config, tmp_path / "out", model=loaded, embedder=HashingEmbedder(DIM), game_cache=cache,
                            progress=False)
    again = load_comparison(tmp_path / "out")
    assert summary_text(again) == summary_text(result) and again.episodes["none"][0].steps == result.episodes["none"][0].steps
