"""TextWorld cooking games: offline generation with a cache, expert/explore play, logging, the CLI.

Two tiny games are generated once for the module (about 2 s each on a 2-core CPU). TextWorld is a
test dependency: without it these tests fail, they do not skip.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

from hullft_agent.envs import cli as envs_cli
from hullft_agent.envs import textworld as tw_env
from hullft_agent.envs.textworld import (
    NO_OUTPUT,
    CookingSettings,
    Episode,
    build_textworld_memory,
    build_textworld_memory_with_summary,
    clean_observation,
    game_seed,
    games_dir,
    generate_games,
    log_episodes,
    play_episode,
)
from hullft_agent.errors import TextWorldEnvError
from hullft_agent.memory import TrajectoryMemory
from hullft_agent.memory import cli as memory_cli
from hullft_agent.memory.testing import HashingEmbedder

TINY = CookingSettings(recipe=1, take=1, rooms=1, open=False, cook=False, cut=False, max_steps=40)
TINY_FLAGS = ["--recipe", "1", "--take", "1", "--rooms", "1", "--no-open", "--no-cook", "--no-cut"]
DIM = 32


def _no_network(*args, **kwargs):
    raise AssertionError("TextWorld tried to open a network connection")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tw-cache")


@pytest.fixture(scope="module")
def games(cache) -> list[Path]:
    with pytest.MonkeyPatch.context() as mp:  # generation must work offline
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        return generate_games("train", 2, TINY, cache, seed0=0, progress=False)


def _walkthrough(game: Path) -> list[str]:
    return list(json.loads(game.with_suffix(".json").read_text())["metadata"]["walkthrough"])


@pytest.fixture(scope="module")
def expert_episodes(games) -> list[Episode]:
    return [play_episode(g, "expert", max_steps=TINY.max_steps) for g in games]


@pytest.fixture(scope="module")
def explore_episodes(games) -> list[Episode]:
    return [
        play_episode(g, "explore", max_steps=TINY.max_steps, rng=7, random_share=0.5, episode_index=0)
        for g in games
    ]


# ------------------------------------------------------------------------------------ generation


def test_games_are_generated_into_the_settings_cache(games, cache):
    folder = games_dir("train", TINY, cache)
    assert folder == cache / TINY.key() / "train"
    assert [g.name for g in games] == [f"game-{game_seed('train', i):07d}.z8" for i in range(2)]
    for game in games:
        assert game.parent == folder and game.stat().st_size > 0
        assert game.with_suffix(".json").stat().st_size > 0
    assert not list(folder.glob(".tmp-*"))
    manifest = json.loads((folder.parent / "settings.json").read_text())
    assert manifest["challenge"] == "tw-cooking" and manifest["recipe"] == 1 and manifest["rooms"] == 1
    # max_steps does not change the games, the other settings do
    assert TINY.model_copy(update={"max_steps": 5}).key() == TINY.key()
    assert TINY.model_copy(update={"cut": True}).key() != TINY.key()


def test_second_call_reuses_the_cache(games, cache):
    before = [(g.stat().st_mtime_ns, g.with_suffix(".json").stat().st_mtime_ns) for g in games]
    started = time.perf_counter()
    again = generate_games("train", 2, TINY, cache, seed0=0, progress=False)
    assert time.perf_counter() - started < 1.0
    assert again == games
    assert [(g.stat().st_mtime_ns, g.with_suffix(".json").stat().st_mtime_ns) for g in again] == before


def test_seeds_are_deterministic_per_split_and_index():
    assert game_seed("train", 0) == 0
    assert game_seed("train", 3, seed0=10) == 13
    assert game_seed("valid", 0) == 1_000_000
    assert game_seed("test", 2) == 2_000_002
    cmd = TINY.tw_make_command("valid", 1_000_004)
    assert cmd[:2] == ["tw-make", "tw-cooking"] and "--go" in cmd and "--open" not in cmd
    assert cmd[cmd.index("--seed") + 1] == "1000004" and cmd[cmd.index("--split") + 1] == "valid"


def test_a_half_written_game_is_regenerated_and_stale_temp_folders_removed(games, tmp_path):
    folder = games_dir("train", TINY, tmp_path)
    folder.mkdir(parents=True)
    half = folder / games[0].name
    half.write_bytes(b"not a game")  # a .z8 without its .json: a killed copy, never reused
    stale = folder / ".tmp-game-0000000-killed"
    stale.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    (path,) = generate_games("train", 1, TINY, tmp_path, progress=False)
    assert path == half and path.stat().st_size > 1000 and path.with_suffix(".json").is_file()
    assert not list(folder.glob(".tmp-*"))
    assert play_episode(path, "expert").won


def test_a_failed_generation_names_the_game_and_leaves_nothing(tmp_path, monkeypatch):
    from textworld.challenges.tw_cooking import cooking

    def broken(settings, options=None):
        raise RuntimeError("no quest")

    monkeypatch.setattr(cooking, "make", broken)
    with pytest.raises(
        TextWorldEnvError, match=r"split 'valid', seed 1000005 \(tw-make tw-cooking.*no quest"
    ):
        generate_games("valid", 1, TINY, tmp_path, seed0=5, progress=False)
    folder = games_dir("valid", TINY, tmp_path)
    assert not [p for p in folder.iterdir()]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "dev"}, "split must be one of .*'dev'"),
        ({"n_games": 0}, "n_games must be >= 1, got 0"),
        ({"n_games": 1.5}, "n_games must be an int, got float"),
        ({"seed0": -1}, "seed0 must be >= 0, got -1"),
    ],
)
def test_generate_rejects_bad_arguments(tmp_path, kwargs, match):
    args = {"split": "train", "n_games": 1, "seed0": 0} | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        generate_games(args["split"], args["n_games"], TINY, tmp_path, seed0=args["seed0"], progress=False)
    assert not list(tmp_path.rglob("*.z8"))


def test_settings_are_validated():
    with pytest.raises(ValueError, match=r"take \(3\) must be <= recipe \(2\)"):
        CookingSettings(recipe=2, take=3)
    with pytest.raises(ValueError, match="rooms"):
        CookingSettings(rooms=5)
    with pytest.raises(ValueError, match="recipe"):
        CookingSettings(recipe=0)
    with pytest.raises(ValueError, match="go"):
        CookingSettings(go=6)
    assert CookingSettings(rooms=9).tw_settings("test")["go"] == 9


# ------------------------------------------------------------------------------------ playing


def test_clean_observation_drops_banner_prompt_and_status():
    raw = (
        "\n\n\n      ________  ________ \n     |        \\|        \\\n      \\$$$$$$$$| $$$$$$$$\n\n"
        "You are hungry!  Let's cook.\n\n-= Kitchen =-\nA fridge.\n\n\n\n"
        ">                                       -= Kitchen =-0/1"
    )
    assert clean_observation(raw) == "You are hungry! Let's cook.\n\n-= Kitchen =-\nA fridge."
    end = (
        "\nYou eat the meal.\n\n\n          *** The End ***\n\nYou scored 3 out of a possible 3, in 6 turns.\n\n\n"
        "Would you like to RESTART, RESTORE a saved game, QUIT or UNDO the last command?\n>   -= Kitchen =-2/5"
    )
    assert (
        clean_observation(end)
        == "You eat the meal.\n\n*** The End ***\n\nYou scored 3 out of a possible 3, in 6 turns."
    )
    assert clean_observation("\n\n>     -= Kitchen =-0/3") == NO_OUTPUT


def test_expert_follows_the_walkthrough_and_wins(games, expert_episodes):
    for game, episode in zip(games, expert_episodes, strict=True):
        assert episode.won and not episode.lost and episode.outcome == "won"
        assert episode.score == episode.max_score > 0
        assert episode.actions == _walkthrough(game)
        assert set(episode.sources) == {"walkthrough"}
        assert episode.game.startswith("tw-cooking-train-recipe1+take1")
        assert episode.episode_id == f"{episode.game}/expert/0" and episode.task == episode.game
        assert episode.split == "train" and episode.game_file == str(game)
        kinds = [k for k, _ in episode.steps]
        assert kinds == ["observation"] + ["action", "observation"] * len(episode.actions)
        first = episode.steps[0][1]
        assert first.startswith(episode.objective) and "Let's cook a delicious meal" in first
        assert "-= Kitchen =-" in first
        for _, text in episode.steps:
            assert "$$" not in text and "\n>" not in text and not text.startswith(">")
            assert "\n\n\n" not in text and text == text.strip() and text
        assert "*** The End ***" in episode.steps[-1][1]


def test_expert_stops_at_max_steps(games):
    episode = play_episode(games[0], "expert", max_steps=2)
    assert episode.moves == 2 and not episode.won and episode.outcome == "lost" and episode.truncated
    assert len(episode.steps) == 5


def test_explore_inserts_random_commands_deterministically(games, explore_episodes):
    for game, episode in zip(games, explore_episodes, strict=True):
        assert "random" in episode.sources
        randoms = [a for a, s in zip(episode.actions, episode.sources, strict=True) if s == "random"]
        assert set(randoms) - set(_walkthrough(game)), "no random command outside the walkthrough"
        assert episode.episode_id == f"{episode.game}/explore/0" and episode.random_share == 0.5
        assert episode.moves <= TINY.max_steps
        again = play_episode(game, "explore", max_steps=TINY.max_steps, rng=7, random_share=0.5)
        assert again.steps == episode.steps and again.sources == episode.sources
    others = [play_episode(g, "explore", rng=8, random_share=0.5) for g in games]
    assert [o.actions for o in others] != [e.actions for e in explore_episodes]


def test_explore_without_random_share_plays_like_the_expert(games, expert_episodes):
    episode = play_episode(games[0], "explore", rng=1, random_share=0.0)
    assert episode.actions == expert_episodes[0].actions and episode.won


def test_random_policy_stays_within_max_steps(games):
    episode = play_episode(games[1], "explore", rng=3, random_share=1.0, max_steps=6)
    assert episode.moves <= 6 and set(episode.sources) == {"random"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"policy": "greedy"}, ValueError, "policy must be one of .*'greedy'"),
        ({"max_steps": 0}, ValueError, "max_steps must be >= 1, got 0"),
        ({"random_share": 1.5}, ValueError, r"random_share must be a number in \[0, 1\], got 1.5"),
        ({"rng": "seed"}, TypeError, "rng must be a numpy Generator"),
    ],
)
def test_play_rejects_bad_arguments(games, kwargs, error, match):
    args = {"policy": "explore"} | kwargs
    policy = args.pop("policy")
    with pytest.raises(error, match=match):
        play_episode(games[0], policy, **args)


def test_play_rejects_missing_and_broken_games(games, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.z8"):
        play_episode(tmp_path / "nope.z8")
    lonely = tmp_path / "lonely.z8"
    shutil.copy(games[0], lonely)
    with pytest.raises(TextWorldEnvError, match="lonely.json"):
        play_episode(lonely)
    broken = tmp_path / "broken.z8"
    broken.write_bytes(b"\x00" * 64)
    shutil.copy(games[0].with_suffix(".json"), broken.with_suffix(".json"))
    with pytest.raises(TextWorldEnvError, match="cannot start TextWorld game .*broken.z8.*not a Z-machine"):
        play_episode(broken)  # the interpreter would exit the process on this file: refused before
    broken.write_bytes(games[0].read_bytes()[:5000])
    with pytest.raises(TextWorldEnvError, match="broken.z8.*truncated story file"):
        play_episode(broken)


class _FakeState(dict):
    feedback = "You are in a void."


class _FakeEnv:
    """A game whose admissible-command list is empty."""

    def reset(self):
        state = _FakeState(won=False, lost=False, score=0, max_score=1, admissible_commands=[])
        state.update({"policy_commands": ["jump"], "extra.walkthrough": ["jump"], "objective": "Jump."})
        return state

    def step(self, command):  # pragma: no cover - never reached
        raise AssertionError(command)

    def close(self):
        pass


def test_empty_admissible_commands_raise(games, monkeypatch):
    monkeypatch.setattr(tw_env, "start_game", lambda path: (_FakeEnv(), _FakeEnv().reset()))
    with pytest.raises(TextWorldEnvError, match=r"empty admissible-command list after 0 commands: \[\]"):
        play_episode(games[0], "explore", rng=0, random_share=1.0)


# ------------------------------------------------------------------------------------ memory


def _memory(path: Path, **kwargs) -> TrajectoryMemory:
    return TrajectoryMemory.open(path, embedder=HashingEmbedder(DIM), **kwargs)


def test_log_episodes_writes_one_row_per_step(tmp_path, expert_episodes, explore_episodes):
    memory = _memory(tmp_path / "mem")
    episodes = expert_episodes + explore_episodes
    done = log_episodes(memory, episodes)
    n_rows = sum(len(e.steps) for e in episodes)
    assert done == {"episodes": 4, "skipped": 0, "rows": n_rows}
    assert memory.count() == n_rows
    summaries = {s.episode_id: s for s in memory.episodes()}
    assert set(summaries) == {e.episode_id for e in episodes}
    for e in episodes:
        s = summaries[e.episode_id]
        assert s.task == e.game and s.rows == len(e.steps) and s.last_step == len(e.steps) - 1
        assert s.reward == float(e.score) and s.outcome == e.outcome
    assert memory.count(where="kind = 'action'") == sum(e.moves for e in episodes)
    pool = memory.candidates(context="take the cookbook", k=n_rows, task=episodes[0].game)
    rows = memory.get(pool.ids)
    assert len(rows) == len(expert_episodes[0].steps) + len(explore_episodes[0].steps)
    for row in rows:
        assert row["metadata"]["split"] == "train" and row["metadata"]["max_score"] == episodes[0].max_score
        assert row["metadata"]["policy"] in ("expert", "explore")
        if row["kind"] == "action":
            assert row["metadata"]["source"] in ("walkthrough", "policy", "random")
    # logging the same episodes again writes nothing
    assert log_episodes(memory, episodes) == {"episodes": 0, "skipped": 4, "rows": 0}
    assert memory.count() == n_rows
    with pytest.raises(ValueError, match="episode ids repeat"):
        log_episodes(memory, [episodes[0], episodes[0]])
    with pytest.raises(TypeError, match=r"episodes\[0\] must be an Episode"):
        log_episodes(memory, [{"episode_id": "x"}])


def test_log_episodes_with_window_granularity(tmp_path, expert_episodes):
    memory = _memory(tmp_path / "mem", granularity="window", window=3)
    episode = expert_episodes[0]
    assert log_episodes(memory, [episode])["rows"] == len(episode.steps)
    assert memory.count(where="kind = 'window'") == len(episode.steps)


def test_build_memory_plays_logs_and_resumes(tmp_path, games, cache):
    out = tmp_path / "mem"
    memory, summary = build_textworld_memory_with_summary(
        out, "train", 2, expert_episodes=1, explore_episodes=1, settings=TINY, random_share=0.4,
        embedder=HashingEmbedder(DIM), seed=0, cache_dir=cache, progress=False,
    )  # fmt: skip
    assert summary.games == 2 and summary.episodes == 4 and summary.skipped == 0
    assert summary.by_policy["expert"]["episodes"] == summary.by_policy["expert"]["wins"] == 2
    assert memory.count() == summary.rows > 0
    assert len({e.task for e in memory.episodes()}) == 2
    first = memory.count()
    again = build_textworld_memory(
        out, "train", 2, expert_episodes=1, explore_episodes=1, settings=TINY, random_share=0.4,
        embedder=HashingEmbedder(DIM), seed=0, cache_dir=cache, progress=False,
    )  # fmt: skip
    assert again.count() == first and len(again.episodes()) == 4
    with pytest.raises(ValueError, match="expert_episodes \\+ explore_episodes must be >= 1"):
        build_textworld_memory(out, "train", 1, expert_episodes=0, explore_episodes=0, settings=TINY,
                               embedder=HashingEmbedder(DIM), cache_dir=cache, progress=False)  # fmt: skip


# ------------------------------------------------------------------------------------ CLI


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    envs_cli.add_episodes_commands(sub)
    return parser.parse_args(argv)


def test_cli_builds_a_memory_end_to_end(tmp_path, games, cache, monkeypatch, capsys):
    made = []

    def fake_embedder(model):
        made.append(model)
        return HashingEmbedder(DIM)

    monkeypatch.setattr(memory_cli, "make_embedder", fake_embedder)
    out = tmp_path / "mem"
    argv = ["episodes", "textworld", "--split", "train", "--games", "2", "--out", str(out)]
    argv += ["--explore", "1", "--random-share", "0.3", "--granularity", "window", "--window", "4"]
    argv += ["--cache-dir", str(cache), "--no-progress", *TINY_FLAGS]
    args = _parse(argv)
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "games      2 tw-cooking train games (recipe 1, take 1, rooms 1)" in text
    assert "episodes   4 logged, 0 already in the memory" in text
    assert "wins       " in text and "time       " in text
    memory = TrajectoryMemory.open(out)
    assert memory.granularity == "window" and memory.window == 4
    assert f"rows       {memory.count()} written (window)" in text
    assert made == [None]
    # a second run uses the table's embedder and logs nothing new
    args = _parse(argv)
    assert args.func(args) == 0
    assert "episodes   0 logged, 4 already in the memory" in capsys.readouterr().out
    assert made == [None, "hashing-32"]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--games", "0"], "n_games must be >= 1, got 0"),
        (["--recipe", "1", "--take", "2"], r"take \(2\) must be <= recipe \(1\)"),
        (["--random-share", "2"], "random_share must be a number in"),
    ],
)
def test_cli_reports_bad_input(tmp_path, cache, monkeypatch, capsys, extra, match):
    monkeypatch.setattr(memory_cli, "make_embedder", lambda model: HashingEmbedder(DIM))
    argv = ["episodes", "textworld", "--out", str(tmp_path / "mem"), "--cache-dir", str(cache)]
    argv += ["--no-progress", "--games", "1", *TINY_FLAGS, *extra]
    args = _parse(argv)
    assert args.func(args) == 2
    assert re.search(match, capsys.readouterr().err)


def test_cli_rejects_a_bad_split():
    with pytest.raises(SystemExit):
        _parse(["episodes", "textworld", "--split", "dev"])


# ------------------------------------------------------------------------------------ install


def test_import_without_textworld_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "textworld", None)
    for module in ("hullft_agent.envs.textworld", "hullft_agent.envs.textworld_games"):
        monkeypatch.delitem(sys.modules, module)
    with pytest.raises(ImportError, match=r'pip install "hullft-agent\[textworld\]"'):
        importlib.import_module("hullft_agent.envs.textworld")
    import hullft_agent.envs  # the package itself imports fine

    with pytest.raises(ImportError, match="hullft-agent"):
        hullft_agent.envs.CookingSettings  # noqa: B018
