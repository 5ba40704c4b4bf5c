"""Real agent episodes from TextWorld cooking games, generated and played offline.

TextWorld (`pip install "hullft-agent[textworld]"`) builds text adventure games from a seed with its
own Inform 7 compiler, and each game carries a walkthrough, so the episodes logged here come from a
real game engine, not from text we wrote:

- `generate_games` makes `tw-cooking` games (the First TextWorld Problems family) into a cache
  folder, once: a game already there is reused, and a game is written atomically, so a generation
  killed halfway never leaves a half file that would be reused.
- `play_episode` plays one game with the `expert` policy (the walkthrough) or the `explore` policy
  (the walkthrough with a share of random admissible commands inserted).
- `log_episodes` writes episodes into a `TrajectoryMemory`; `build_textworld_memory` does it all.

Seeds are deterministic: game `index` of a split has the TextWorld seed
`seed0 + 1_000_000 * {train: 0, valid: 1, test: 2}[split] + index`, so the same game can be made by
hand with `tw-make tw-cooking ... --split SPLIT --seed SEED` (`CookingSettings.tw_make_command`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from hullft_agent.config import StrictConfig, default_cache_dir
from hullft_agent.errors import TextWorldEnvError
from hullft_agent.files import write_json_atomic

INSTALL_HINT = 'TextWorld is not installed; install the optional extra: pip install "hullft-agent[textworld]"'

if importlib.util.find_spec("textworld") is None:
    raise ImportError(INSTALL_HINT, name="textworld")

logger = logging.getLogger(__name__)

Split = Literal["train", "valid", "test"]
Policy = Literal["expert", "explore"]
#: Game distributions of tw-cooking: foods and their preparations are split three ways.
SPLITS: tuple[str, ...] = ("train", "valid", "test")
#: `expert` follows the walkthrough; `explore` inserts random admissible commands.
POLICIES: tuple[str, ...] = ("expert", "explore")
#: Seeds of the splits are this far apart, so splits never share a seed.
SPLIT_SEED_STRIDE = 1_000_000
#: Text logged for a command whose response is empty once cleaned.
NO_OUTPUT = "(no response)"

_STALE_TEMP_S = 3600.0


def _textworld() -> Any:
    """Import TextWorld (slow, about a second) only when a game is made or played."""
    try:
        import textworld
        import textworld.challenges.tw_cooking.cooking  # noqa: F401  (registers tw-cooking)
        import textworld.generator  # noqa: F401
    except ImportError as exc:
        raise ImportError(INSTALL_HINT, name="textworld") from exc
    return textworld


def _textworld_version() -> str:
    try:
        return metadata.version("textworld")
    except metadata.PackageNotFoundError:  # importable but not installed as a distribution
        return "unknown"


class CookingSettings(StrictConfig):
    """Difficulty of the generated `tw-cooking` games (the `tw-make tw-cooking` options).

    `recipe` → `--recipe`, `take` → `--take`, `rooms` → `--go`, and the flags `--open`, `--cook`,
    `--cut`, `--drop`. `max_steps` caps an episode's commands when the games are played; it does not
    change the games (nor their cache folder).
    """

    recipe: int = Field(2, ge=1, le=5, description="ingredients in the recipe (--recipe)")
    take: int = Field(
        2, ge=0, le=5, description="ingredients to find, the others start in the inventory (--take)"
    )
    rooms: Literal[1, 6, 9, 12] = Field(6, description="locations in the game (--go)")
    open: bool = Field(True, description="containers and doors must be opened (--open)")
    cook: bool = Field(True, description="some ingredients must be cooked (--cook)")
    cut: bool = Field(True, description="some ingredients must be cut (--cut)")
    drop: bool = Field(False, description="the inventory has a limited capacity (--drop)")
    max_steps: int = Field(100, ge=1, description="commands per episode at most")

    @model_validator(mode="after")
    def _take_within_recipe(self) -> CookingSettings:
        if self.take > self.recipe:
            raise ValueError(f"take ({self.take}) must be <= recipe ({self.recipe})")
        return self

    def game_settings(self) -> dict[str, Any]:
        """The settings that define the games (everything but `max_steps`)."""
        return self.model_dump(exclude={"max_steps"})

    def tw_settings(self, split: str) -> dict[str, Any]:
        """The settings mapping `textworld.challenges.tw_cooking.make` takes."""
        return {
            "recipe": self.recipe,
            "take": self.take,
            "go": self.rooms,
            "open": self.open,
            "cook": self.cook,
            "cut": self.cut,
            "drop": self.drop,
            "recipe_seed": 0,
            "split": _check_split(split),
        }

    def tw_make_command(self, split: str, seed: int, output: str = "game.z8") -> list[str]:
        """The `tw-make` command line that makes the same game by hand."""
        cmd = ["tw-make", "tw-cooking", "--recipe", str(self.recipe), "--take", str(self.take)]
        cmd += ["--go", str(self.rooms)]
        cmd += [f"--{flag}" for flag in ("open", "cook", "cut", "drop") if getattr(self, flag)]
        cmd += ["--split", _check_split(split), "--seed", str(seed), "--output", output]
        return cmd

    def key(self) -> str:
        """A short hash of the game settings and the TextWorld version: the cache folder's name."""
        payload = {"challenge": "tw-cooking", "textworld": _textworld_version(), **self.game_settings()}
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()
        return digest[:12]


def _check_split(split: Any) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return str(split)


def _check_count(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def game_seed(split: str, index: int, seed0: int = 0) -> int:
    """The TextWorld seed of game `index` of `split`: `seed0 + 1_000_000 * split_number + index`."""
    split = _check_split(split)
    index = _check_count(index, "index", 0)
    seed0 = _check_count(seed0, "seed0", 0)
    if index >= SPLIT_SEED_STRIDE:
        raise ValueError(f"index must be < {SPLIT_SEED_STRIDE}, got {index}")
    seed = seed0 + SPLIT_SEED_STRIDE * SPLITS.index(split) + index
    if seed >= 2**32:
        raise ValueError(f"seed0 {seed0} is too large: TextWorld seeds must be < 2**32")
    return seed


def games_dir(
    split: str, settings: CookingSettings | None = None, cache_dir: str | Path | None = None
) -> Path:
    """`<cache_dir>/<settings key>/<split>/`; `cache_dir` defaults to `<hullft cache>/textworld`."""
    settings = settings or CookingSettings()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "textworld"
    return root / settings.key() / _check_split(split)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _is_complete(path: Path) -> bool:
    """A game is complete when its .z8 (renamed last) and its .json (walkthrough, infos) are there."""
    json_file = path.with_suffix(".json")
    return path.is_file() and json_file.is_file() and path.stat().st_size > 0 and json_file.stat().st_size > 0


def _remove_stale_temp(folder: Path) -> None:
    """Remove temporary folders of generations killed long ago (a live one is younger)."""
    now = time.time()
    for tmp in folder.glob(".tmp-*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TEMP_S:
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _generate_one(path: Path, split: str, seed: int, settings: CookingSettings) -> None:
    tw = _textworld()
    from textworld.challenges.tw_cooking import cooking

    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.stem}-", dir=path.parent))
    try:
        options = tw.GameOptions()
        options.seeds = int(seed)
        options.path = str(tmp / path.name)
        options.file_ext = ".z8"
        options.force_recompile = True
        with warnings.catch_warnings():  # jericho warns while TextWorld replays the walkthrough
            warnings.filterwarnings("ignore", message=r".*is not fully supported")
            game = cooking.make(settings.tw_settings(split), options)
            compiled = Path(tw.generator.compile_game(game, options))
        json_file = compiled.with_suffix(".json")
        if not compiled.is_file() or not json_file.is_file():
            raise TextWorldEnvError(f"TextWorld wrote no {compiled.name} and {json_file.name}")
        _fsync(json_file)
        _fsync(compiled)
        os.replace(json_file, path.with_suffix(".json"))
        os.replace(compiled, path)  # last: a .z8 in the cache means its game is complete
    except Exception as exc:
        command = " ".join(settings.tw_make_command(split, seed))
        raise TextWorldEnvError(
            f"cannot generate the tw-cooking game of split {split!r}, seed {seed} ({command}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def generate_games(
    split: str = "train",
    n_games: int = 1,
    settings: CookingSettings | None = None,
    cache_dir: str | Path | None = None,
    *,
    seed0: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Paths of `n_games` tw-cooking games of `split`, generated into the cache once and then reused.

    Games live in `games_dir(split, settings, cache_dir)` as `game-<seed>.z8` with the `.json`
    TextWorld needs beside it. Each is generated in a temporary folder and renamed into place (the
    `.z8` last), so a killed generation leaves nothing that is taken for a game. About 1.5 to 2.5 s
    a game on a 2-core CPU.
    """
    split = _check_split(split)
    n_games = _check_count(n_games, "n_games", 1)
    seed0 = _check_count(seed0, "seed0", 0)
    settings = settings or CookingSettings()
    seeds = [game_seed(split, i, seed0) for i in range(n_games)]
    folder = games_dir(split, settings, cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder.parent / "settings.json"
    if not manifest.is_file():
        payload = {"challenge": "tw-cooking", "textworld": _textworld_version(), **settings.game_settings()}
        write_json_atomic(manifest, payload)
    _remove_stale_temp(folder)

    from tqdm.auto import tqdm

    paths: list[Path] = []
    made = 0
    started = time.perf_counter()
    for seed in tqdm(seeds, desc=f"tw-cooking {split} games", unit="game", disable=not progress):
        path = folder / f"game-{seed:07d}.z8"
        if not _is_complete(path):
            _generate_one(path, split, seed, settings)
            made += 1
        paths.append(path)
    logger.info(
        "%d tw-cooking %s games in %s (%d generated in %.1f s, %d reused)",
        n_games,
        split,
        folder,
        made,
        time.perf_counter() - started,
        n_games - made,
    )
    return paths


# ---------------------------------------------------------------------------------------- playing

_BANNER_CHARS = r"_|\\$/<>"
_BANNER_LINE = re.compile(rf"^[\s{_BANNER_CHARS}]*[_|\\$][\s{_BANNER_CHARS}]*$")
_PROMPT_LINE = re.compile(r"^>(\s.*)?$")  # the input prompt, with the status line (room, score/moves)
_RESTART_LINE = re.compile(r"^Would you like to RESTART")


def clean_observation(text: str) -> str:
    """Game output as an agent should see it.

    Drops the ASCII-art title banner, the `>` prompt with its status line (room, score/moves), the
    RESTART/RESTORE/QUIT question at the end of a game, and runs of whitespace (one blank line at
    most between paragraphs). An output with nothing left becomes `NO_OUTPUT`.
    """
    lines = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        stripped = line.strip()
        if _BANNER_LINE.match(line) or _PROMPT_LINE.match(stripped) or _RESTART_LINE.match(stripped):
            continue
        lines.append(" ".join(stripped.split()))
    cleaned = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return cleaned or NO_OUTPUT


@dataclass
class Episode:
    """One played game: what the agent saw and did, and how it ended.

    `steps` are `(kind, text)` pairs: the initial observation (with the objective), then for each
    command an `("action", command)` and the `("observation", response)` it got. `sources` says,
    for each action, where it came from: `walkthrough`, `policy` (the engine's winning plan from the
    current state, used by `explore` after a random command broke the walkthrough) or `random`.
    """

    game: str
    game_file: str
    episode_id: str
    policy: str
    steps: list[tuple[str, str]]
    sources: list[str]
    score: int
    max_score: int
    won: bool
    lost: bool
    split: str | None = None
    random_share: float = 0.0
    objective: str = ""

    @property
    def task(self) -> str:
        """The memory task of the episode: its game."""
        return self.game

    @property
    def actions(self) -> list[str]:
        return [text for kind, text in self.steps if kind == "action"]

    @property
    def moves(self) -> int:
        return len(self.sources)

    @property
    def outcome(self) -> str:
        """`won`, or `lost` (the game was lost, or it ended at `max_steps` without a win)."""
        return "won" if self.won else "lost"

    @property
    def truncated(self) -> bool:
        """The episode stopped (max_steps, no winning plan left) before the game was won or lost."""
        return not (self.won or self.lost)


def _new_rng(rng: Any) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def _check_story_file(path: Path) -> None:
    """Refuse a file that is not a whole Z-machine story: the interpreter would exit the process."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(64)
    version = header[0] if header else 0
    if len(header) < 64 or not 1 <= version <= 8:
        raise TextWorldEnvError(
            f"cannot start TextWorld game {str(path)!r}: not a Z-machine story file "
            f"({size} bytes, version byte {version})"
        )
    scale = 2 if version <= 3 else 8 if version == 8 else 4
    declared = int.from_bytes(header[0x1A:0x1C], "big") * scale
    if declared > size:
        raise TextWorldEnvError(
            f"cannot start TextWorld game {str(path)!r}: truncated story file ({size} of {declared} bytes)"
        )


def start_game(game_file: Path) -> Any:
    """Start a game file; return `(env, state)`, the state with the infos the agent and the policies read.

    Raises `TextWorldEnvError` naming the file when it is not a story file or the engine refuses it.
    """
    tw = _textworld()
    _check_story_file(game_file)
    infos = tw.EnvInfos(
        admissible_commands=True,
        policy_commands=True,
        objective=True,
        max_score=True,
        won=True,
        lost=True,
        moves=True,
        extras=["walkthrough", "uuid", "settings"],
    )
    try:
        with warnings.catch_warnings():  # jericho: "not fully supported", TextWorld keeps the score itself
            warnings.filterwarnings("ignore", message=r".*is not fully supported")
            env = tw.start(str(game_file), request_infos=infos)
            state = env.reset()
    except Exception as exc:
        raise TextWorldEnvError(
            f"cannot start TextWorld game {str(game_file)!r}: {type(exc).__name__}: {exc}"
        ) from exc
    return env, state


def play_episode(
    game_file: str | Path,
    policy: str = "expert",
    *,
    max_steps: int = 100,
    rng: np.random.Generator | int | None = None,
    random_share: float = 0.3,
    episode_index: int = 0,
    episode_id: str | None = None,
) -> Episode:
    """Play one game and return the `Episode`; the id defaults to `<game>/<policy>/<episode_index>`.

    `expert` issues the walkthrough's commands in order and stops when the game ends, the
    walkthrough runs out or `max_steps` commands were issued. `explore` draws, before each command,
    a random admissible command with probability `random_share` (never the one the expert would
    issue now); otherwise it issues the expert's next command. After a random command it keeps
    following the walkthrough from where it was while the engine's winning plan is unchanged (the
    command was harmless, like `examine` or `look`); once a random command changed that plan, or
    the walkthrough ran out without a win, the expert's next command is the first of the engine's
    winning plan from the current state (`policy_commands`), recomputed after every command. The
    episode ends when the game is won or lost, after `max_steps` commands, or when no winning plan
    is left. `random_share=0` plays like `expert`; the same `rng` seed gives the same episode.
    """
    path = Path(game_file)
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {list(POLICIES)}, got {policy!r}")
    max_steps = _check_count(max_steps, "max_steps", 1)
    episode_index = _check_count(episode_index, "episode_index", 0)
    if (
        isinstance(random_share, bool)
        or not isinstance(random_share, (int, float))
        or not (0.0 <= float(random_share) <= 1.0)
    ):
        raise ValueError(f"random_share must be a number in [0, 1], got {random_share!r}")
    if not path.is_file():
        raise FileNotFoundError(f"TextWorld game file not found: {str(path)!r}")
    if not path.with_suffix(".json").is_file():
        raise TextWorldEnvError(
            f"TextWorld game {str(path)!r} has no {path.with_suffix('.json').name} beside it "
            "(it holds the walkthrough); regenerate the game"
        )
    generator = _new_rng(rng)

    env, state = start_game(path)
    try:
        game = str(state.get("extra.uuid") or path.stem)
        walkthrough = list(state.get("extra.walkthrough") or [])
        if not walkthrough:
            raise TextWorldEnvError(f"TextWorld game {str(path)!r} has no walkthrough")
        objective = str(state.get("objective") or "")
        first = clean_observation(state.feedback)
        if objective and objective not in first:
            first = f"{objective}\n\n{first}" if first != NO_OUTPUT else objective
        steps: list[tuple[str, str]] = [("observation", first)]
        sources: list[str] = []
        walk = deque(walkthrough)
        on_walkthrough = True

        def finished() -> bool:
            return bool(state["won"] or state["lost"]) or len(sources) >= max_steps

        while not finished():
            plan = list(state["policy_commands"] or [])
            if on_walkthrough and not walk:
                if policy == "expert":
                    break
                on_walkthrough = False  # the walkthrough ran out without a win: follow the engine
            if on_walkthrough:
                planned, source = walk[0], "walkthrough"
            elif plan:
                planned, source = plan[0], "policy"
            else:
                logger.debug("%s: no winning plan left after %d commands", game, len(sources))
                break
            command = planned
            if policy == "explore" and random_share > 0 and generator.random() < random_share:
                admissible = sorted(state["admissible_commands"] or [])
                if not admissible:
                    raise TextWorldEnvError(
                        f"game {game!r} ({str(path)!r}) gave an empty admissible-command list after "
                        f"{len(sources)} commands: {admissible!r}"
                    )
                choices = [c for c in admissible if c != planned]
                if choices:
                    command, source = choices[int(generator.integers(len(choices)))], "random"
            if source == "walkthrough":
                walk.popleft()
            state, _, _ = env.step(command)
            steps.append(("action", command))
            steps.append(("observation", clean_observation(state.feedback)))
            sources.append(source)
            if source == "random" and on_walkthrough and list(state["policy_commands"] or []) != plan:
                on_walkthrough = False
        settings = state.get("extra.settings") or {}
        return Episode(
            game=game,
            game_file=str(path),
            episode_id=episode_id or f"{game}/{policy}/{episode_index}",
            policy=policy,
            steps=steps,
            sources=sources,
            score=int(state["score"]),
            max_score=int(state["max_score"]),
            won=bool(state["won"]),
            lost=bool(state["lost"]),
            split=settings.get("split") if isinstance(settings, dict) else None,
            random_share=float(random_share) if policy == "explore" else 0.0,
            objective=objective,
        )
    finally:
        env.close()


# ---------------------------------------------------------------------------------------- memory


def _episode_rows(episode: Episode, namespace: str | None) -> list[Any]:
    from hullft_agent.memory.schema import Step

    meta: dict[str, Any] = {
        "split": episode.split,
        "policy": episode.policy,
        "max_score": episode.max_score,
        "moves": episode.moves,
        "truncated": episode.truncated,
    }
    if episode.policy == "explore":
        meta["random_share"] = episode.random_share
    rows = []
    action = 0
    for i, (kind, text) in enumerate(episode.steps):
        row_meta = dict(meta)
        if kind == "action":
            row_meta["source"] = episode.sources[action]
            action += 1
        rows.append(
            Step(
                kind=kind,
                text=text,
                episode_id=episode.episode_id,
                step=i,
                task=episode.game,
                namespace=namespace,
                reward=float(episode.score),
                outcome=episode.outcome,
                metadata=row_meta,
            )
        )
    return rows


def log_episodes(
    memory: Any,
    episodes: Iterable[Episode],
    *,
    namespace: str | None = None,
    skip_existing: bool = True,
    progress: bool = False,
) -> dict[str, int]:
    """Log episodes into a `TrajectoryMemory` in one batch; return counts of episodes, skipped, rows.

    Each step is a row (or, with granularity 'window', a row holding it and the steps before it):
    task = the game, episode id `<game>/<policy>/<k>`, reward = the final score, outcome `won` or
    `lost`, metadata `{split, policy, max_score, moves, truncated[, random_share]}` plus, on action
    rows, `source`. With `skip_existing`, an episode id already in the namespace is not logged again
    (so a killed build can be resumed).
    """
    episodes = list(episodes)
    for i, ep in enumerate(episodes):
        if not isinstance(ep, Episode):
            raise TypeError(f"episodes[{i}] must be an Episode, got {type(ep).__name__}")
    ids = [ep.episode_id for ep in episodes]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"episode ids repeat in one call: {repeated}")
    existing: set[str] = set()
    if skip_existing and episodes:
        existing = {e.episode_id for e in memory.episodes(namespace)}
    todo = [ep for ep in episodes if ep.episode_id not in existing]
    rows = [row for ep in todo for row in _episode_rows(ep, namespace)]
    written = memory.add(rows, namespace=namespace, progress=progress) if rows else []
    return {"episodes": len(todo), "skipped": len(episodes) - len(todo), "rows": len(written)}


@dataclass
class BuildSummary:
    """What `build_textworld_memory` did."""

    games: int = 0
    games_generated_s: float = 0.0
    episodes: int = 0
    skipped: int = 0
    rows: int = 0
    wins: int = 0
    by_policy: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0


def build_textworld_memory_with_summary(
    out_dir: str | Path,
    split: str = "train",
    n_games: int = 40,
    *,
    expert_episodes: int = 1,
    explore_episodes: int = 2,
    settings: CookingSettings | None = None,
    random_share: float = 0.3,
    embedder: Any = None,
    granularity: Literal["step", "window"] | None = None,
    window: int | None = None,
    seed: int = 0,
    namespace: str | None = None,
    table: str = "trajectories",
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> tuple[Any, BuildSummary]:
    """`build_textworld_memory`, also returning a `BuildSummary` of this run."""
    from tqdm.auto import tqdm

    from hullft_agent.memory.store import TrajectoryMemory

    started = time.perf_counter()
    split = _check_split(split)
    n_games = _check_count(n_games, "n_games", 1)
    expert_episodes = _check_count(expert_episodes, "expert_episodes", 0)
    explore_episodes = _check_count(explore_episodes, "explore_episodes", 0)
    if expert_episodes + explore_episodes < 1:
        raise ValueError("expert_episodes + explore_episodes must be >= 1, got 0 and 0")
    seed = _check_count(seed, "seed", 0)
    settings = settings or CookingSettings()
    summary = BuildSummary()

    files = generate_games(split, n_games, settings, cache_dir, seed0=seed, progress=progress)
    summary.games = len(files)
    summary.games_generated_s = time.perf_counter() - started
    if embedder is None:
        from hullft_agent.embedding import Embedder

        embedder = Embedder()
    overrides: dict[str, Any] = {"table": table}
    if granularity is not None:
        overrides["granularity"] = granularity
    if window is not None:
        overrides["window"] = window
    memory = TrajectoryMemory.open(out_dir, embedder=embedder, namespace=namespace, **overrides)
    existing = {e.episode_id for e in memory.episodes()}
    plan: list[tuple[str, int]] = [("expert", k) for k in range(expert_episodes)]
    plan += [("explore", k) for k in range(explore_episodes)]

    for index, path in enumerate(tqdm(files, desc="playing and logging", unit="game", disable=not progress)):
        tw_seed = game_seed(split, index, seed)
        episodes = []
        for policy, k in plan:
            episode = play_episode(
                path,
                policy,
                max_steps=settings.max_steps,
                rng=np.random.default_rng([seed, tw_seed, k]),
                random_share=random_share,
                episode_index=k,
            )
            if episode.episode_id in existing:
                summary.skipped += 1
                continue
            episodes.append(episode)
            stats = summary.by_policy.setdefault(policy, {"episodes": 0, "wins": 0, "moves": 0})
            stats["episodes"] += 1
            stats["wins"] += int(episode.won)
            stats["moves"] += episode.moves
        logged = log_episodes(memory, episodes, skip_existing=False)
        summary.episodes += logged["episodes"]
        summary.rows += logged["rows"]
        summary.wins += sum(ep.won for ep in episodes)
    summary.seconds = time.perf_counter() - started
    logger.info(
        "textworld memory %s: %d games, %d episodes logged (%d already there), %d rows, %d wins, %.1f s",
        memory.uri,
        summary.games,
        summary.episodes,
        summary.skipped,
        summary.rows,
        summary.wins,
        summary.seconds,
    )
    return memory, summary


def build_textworld_memory(
    out_dir: str | Path,
    split: str = "train",
    n_games: int = 40,
    *,
    expert_episodes: int = 1,
    explore_episodes: int = 2,
    settings: CookingSettings | None = None,
    random_share: float = 0.3,
    embedder: Any = None,
    granularity: Literal["step", "window"] | None = None,
    window: int | None = None,
    seed: int = 0,
    namespace: str | None = None,
    table: str = "trajectories",
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Any:
    """Generate `n_games` games of `split`, play each `expert_episodes` + `explore_episodes` times,
    and log every episode into the `TrajectoryMemory` at `out_dir`; return the memory.

    `seed` is both the first game seed (`seed0`) and the seed of the explore policies (episode k of
    the game with TextWorld seed s uses `numpy.random.default_rng([seed, s, k])`), so a build is
    reproducible. An episode id already in the memory is not logged twice (episodes are logged one
    commit per game), so running the same build again after it was killed completes it. `embedder` None loads the packaged all-MiniLM-L6-v2;
    `granularity`/`window` None keep the table's own setting ('step' for a new table).
    """
    memory, _ = build_textworld_memory_with_summary(
        out_dir,
        split,
        n_games,
        expert_episodes=expert_episodes,
        explore_episodes=explore_episodes,
        settings=settings,
        random_share=random_share,
        embedder=embedder,
        granularity=granularity,
        window=window,
        seed=seed,
        namespace=namespace,
        table=table,
        cache_dir=cache_dir,
        progress=progress,
    )
    return memory


__all__ = [
    "INSTALL_HINT",
    "NO_OUTPUT",
    "POLICIES",
    "SPLITS",
    "BuildSummary",
    "CookingSettings",
    "Episode",
    "TextWorldEnvError",
    "build_textworld_memory",
    "build_textworld_memory_with_summary",
    "clean_observation",
    "game_seed",
    "games_dir",
    "generate_games",
    "log_episodes",
    "play_episode",
]
