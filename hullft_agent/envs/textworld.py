"""Real agent episodes from TextWorld cooking games, generated and played offline.

TextWorld (`pip install "hullft-agent[textworld]"`) builds text adventure games from a seed with its
own Inform 7 compiler, and each game carries a walkthrough, so the episodes logged here come from a
real game engine, not from text we wrote:

- `generate_games` makes `tw-cooking` games (the First TextWorld Problems family) into a cache
  folder, once (`hullft_agent.envs.textworld_games`; its public names are exported here too).
- `play_episode` plays one game with the `expert` policy (the walkthrough) or the `explore` policy
  (the walkthrough with a share of random admissible commands inserted).
- `log_episodes` writes episodes into a `TrajectoryMemory`; `build_textworld_memory` does it all.

Seeds are deterministic (`game_seed`), so every build of a memory is reproducible.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hullft_agent.envs.textworld_games import (
    INSTALL_HINT,
    SPLITS,
    CookingSettings,
    check_count,
    check_split,
    game_seed,
    games_dir,
    generate_games,
    import_textworld,
)
from hullft_agent.errors import InvalidArgumentError, InvalidTypeError, TextWorldEnvError

logger = logging.getLogger(__name__)

#: `expert` follows the walkthrough; `explore` inserts random admissible commands.
POLICIES: tuple[str, ...] = ("expert", "explore")
#: Text logged for a command whose response is empty once cleaned.
NO_OUTPUT = "(no response)"


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
    raise InvalidTypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


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
    tw = import_textworld()
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
        raise InvalidArgumentError(f"policy must be one of {list(POLICIES)}, got {policy!r}")
    max_steps = check_count(max_steps, "max_steps", 1)
    episode_index = check_count(episode_index, "episode_index", 0)
    if (
        isinstance(random_share, bool)
        or not isinstance(random_share, (int, float))
        or not (0.0 <= float(random_share) <= 1.0)
    ):
        raise InvalidArgumentError(f"random_share must be a number in [0, 1], got {random_share!r}")
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
            raise InvalidTypeError(f"episodes[{i}] must be an Episode, got {type(ep).__name__}")
    ids = [ep.episode_id for ep in episodes]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise InvalidArgumentError(f"episode ids repeat in one call: {repeated}")
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
    """Generate `n_games` games of `split`, play each `expert_episodes` + `explore_episodes` times, and
    log every episode into the `TrajectoryMemory` at `out_dir`; return the memory and a `BuildSummary`.

    `seed` is both the first game seed (`seed0`) and the seed of the explore policies (episode k of
    the game with TextWorld seed s uses `numpy.random.default_rng([seed, s, k])`), so a build is
    reproducible. An episode id already in the memory is not logged twice (episodes are logged one
    commit per game), so running the same build again after it was killed completes it. `embedder`
    None loads the packaged all-MiniLM-L6-v2; `granularity`/`window` None keep the table's own
    setting ('step' for a new table).
    """
    from tqdm.auto import tqdm

    from hullft_agent.memory.store import TrajectoryMemory

    started = time.perf_counter()
    split = check_split(split)
    n_games = check_count(n_games, "n_games", 1)
    expert_episodes = check_count(expert_episodes, "expert_episodes", 0)
    explore_episodes = check_count(explore_episodes, "explore_episodes", 0)
    if expert_episodes + explore_episodes < 1:
        raise InvalidArgumentError("expert_episodes + explore_episodes must be >= 1, got 0 and 0")
    seed = check_count(seed, "seed", 0)
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


def build_textworld_memory(out_dir: str | Path, split: str = "train", n_games: int = 40, **options: Any) -> Any:
    """`build_textworld_memory_with_summary` without the summary: the memory alone.

    `options` are that function's keyword arguments (episodes per game, settings, embedder, seed, ...).
    """
    return build_textworld_memory_with_summary(out_dir, split, n_games, **options)[0]


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
    "start_game",
]
