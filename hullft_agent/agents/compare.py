"""Adaptation modes side by side: the TextWorld agent on the same held-out games, with a report.

`run_comparison` generates a small set of tw-cooking games, builds a trajectory memory from the
expert and exploring episodes of the training games, and lets a `TextWorldAgent` play the held-out
(test-split) games once per mode:

- `none`: the base model, no adaptation;
- `per_query`: HullFT selection and a fresh LoRA adaptation before every command;
- `per_task`: HullFT, one adapter per game kept across its commands, trained incrementally (each
  command trains only the selected rows the game's adapter has not been trained on yet);
- `knn`: nearest-neighbour selection, per_query;
- `decisions`, `decisions_query`, `decisions_knn`: the same on decision rows of won episodes;
- `bc`: offline behaviour cloning, one LoRA trained once before the games on every decision row of
  the training memory (`hullft_agent.finetune.behaviour_cloning`), then fixed: no test-time
  selection, so the report shows what selecting per step adds over training once.

Every mode starts from its own copy of the training memory and logs its own episodes into it, so
later games can learn from earlier ones (continual learning) without one mode seeing another's
episodes. Results are written as they come (`results.json`), then `report.md` with the per-game,
total, BPB, latency and continual tables and PNG plots (matplotlib, the `bench` extra). The
continual table follows each mode along the stream of games: the second half's mean score minus
the first half's, against the same difference under `none` (games differ in difficulty, so the same
games played without adaptation are the control).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from hullft_agent.agents.textworld import (
    AgentConfig,
    AgentInterrupted,
    EpisodeResult,
    StepRecord,
    TextWorldAgent,
    action_bpb,
)
from hullft_agent.config import DecisionFormat, LearnFrom, StrictConfig
from hullft_agent.errors import InvalidArgumentError
from hullft_agent.evaluation.report import bootstrap_mean_ci
from hullft_agent.runtime import DEFAULT_SCORING, Scoring, Strategy

logger = logging.getLogger(__name__)

#: Call options of each mode (TextWorldAgent keyword arguments: adapt and adaptation overrides).
#: Decision modes train on decision rows (prompt -> command, loss on the command) of won episodes only:
#: the experts' walkthroughs of the training games, then the agent's own won games.
LEARN_FROM_WINS = LearnFrom(kinds=["decision"], outcomes=["won"])
#: Training prompts without the system prompt and with two earlier messages (bench_decisions' format study).
DECISION_FORMAT = DecisionFormat(system=False, history=2)
MODES: dict[str, dict[str, Any]] = {
    "none": {"adapt": False},
    "per_query": {"method": "hullft", "mode": "per_query"},
    "per_task": {"method": "hullft", "mode": "per_task"},
    "knn": {"method": "knn", "mode": "per_query"},
    "decisions": {"method": "hullft", "mode": "per_task", "learn_from": LEARN_FROM_WINS,
                  "decision_format": DECISION_FORMAT},
    "decisions_query": {"method": "hullft", "mode": "per_query", "learn_from": LEARN_FROM_WINS,
                        "decision_format": DECISION_FORMAT},
    "decisions_knn": {"method": "knn", "mode": "per_query", "learn_from": LEARN_FROM_WINS,
                      "decision_format": DECISION_FORMAT},
    # the agent plays unadapted, on a model trained once before the games (see run_comparison)
    "bc": {"adapt": False},
}
#: Modes whose memory needs the training games' walkthrough decisions (decision rows, actor expert, won).
DECISION_MODES = ("decisions", "decisions_query", "decisions_knn", "bc")
MEMORY_NAMESPACE = "textworld"
_BOOTSTRAP = 2000


class CompareConfig(StrictConfig):
    """Sizes and settings of a comparison; the defaults are the `make demo` run (the CLI's only source of them)."""

    modes: list[str] = Field(default_factory=lambda: ["none", "decisions"], min_length=1)
    train_games: int = Field(6, ge=1, description="training games whose episodes fill the memory")
    test_games: int = Field(3, ge=1, description="held-out (test split) games the agent plays per mode")
    expert_episodes: int = Field(1, ge=0, description="expert episodes per training game")
    explore_episodes: int = Field(2, ge=0, description="exploring episodes per training game")
    random_share: float = Field(0.3, ge=0, le=1)
    recipe: int = Field(1, ge=1, le=5)
    take: int = Field(1, ge=0, le=5)
    rooms: int = Field(1, description="1, 6, 9 or 12")
    open: bool = True
    cook: bool = True
    cut: bool = True
    window: int = Field(4, ge=1, description="memory rows are windows of this many steps")
    n: int = Field(6, ge=1, description="N: instances in each selected multiset")
    k: int = Field(100, ge=1, description="K: candidate pool per adaptation")
    lr: float = Field(1e-3, gt=0)
    max_length: int = Field(128, ge=8, description="training sequences are cut to this many tokens")
    decision_max_length: int = Field(
        384, ge=8, description="decision modes and bc: training prompts are cut (oldest tokens first) to this many tokens"
    )
    bc_epochs: int = Field(2, ge=1, description="bc: passes over the training memory's decision rows")
    max_steps: int = Field(30, ge=1)
    step_factor: float | None = Field(2.0, gt=0)
    history: int = Field(3, ge=0)
    strategy: Strategy = "loglik"
    scoring: Scoring = DEFAULT_SCORING
    temperature: float = Field(1.0, ge=0, description="command choice: 0 greedy, T > 0 drawn ∝ exp(score / T)")
    seed: int = Field(0, ge=0)

    @field_validator("modes")
    @classmethod
    def _modes(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in MODES]
        if unknown:
            raise InvalidArgumentError(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
        if len(set(value)) != len(value):
            raise InvalidArgumentError(f"modes repeat: {value}")
        return value

    @field_validator("rooms")
    @classmethod
    def _rooms(cls, value: int) -> int:
        if value not in (1, 6, 9, 12):
            raise InvalidArgumentError(f"rooms must be 1, 6, 9 or 12, got {value}")
        return value

    def cooking(self) -> Any:
        from hullft_agent.envs.textworld import CookingSettings

        return CookingSettings(recipe=self.recipe, take=self.take, rooms=self.rooms, open=self.open,
                               cook=self.cook, cut=self.cut, max_steps=self.max_steps)

    def agent(self) -> AgentConfig:
        return AgentConfig(history=self.history, max_steps=self.max_steps, step_factor=self.step_factor,
                           strategy=self.strategy, scoring=self.scoring, temperature=self.temperature,
                           seed=self.seed)


@dataclass
class Comparison:
    """Everything a comparison produced; `episodes[mode]` are in game order."""

    config: CompareConfig
    out_dir: Path
    episodes: dict[str, list[EpisodeResult]] = field(default_factory=dict)
    memory_rows: int = 0
    setup_s: float = 0.0
    seconds: float = 0.0
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)
    #: Work a mode did once before its games (bc: its training), with its seconds: mode -> numbers.
    mode_setup: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(mode="json"),
            "memory_rows": self.memory_rows,
            "setup_s": self.setup_s,
            "seconds": self.seconds,
            "interrupted": self.interrupted,
            "notes": self.notes,
            "mode_setup": self.mode_setup,
            "totals": {mode: mode_totals(eps) for mode, eps in self.episodes.items()},
            "differences": self.differences(),
            "continual": continual_summary(self),
            "episodes": {mode: [e.to_dict() for e in eps] for mode, eps in self.episodes.items()},
        }

    def differences(self) -> dict[str, Any]:
        """Score difference of each adapted mode against `none`, game by game (paired)."""
        base = {e.game: e for e in self.episodes.get("none", []) if e.outcome != "error"}
        out: dict[str, Any] = {}
        for mode, eps in self.episodes.items():
            if mode == "none" or not base:
                continue
            pairs = [(e.score - base[e.game].score) for e in eps if e.game in base and e.outcome != "error"]
            if pairs:
                out[mode] = paired_summary(pairs, seed=self.config.seed)
        return out


def load_comparison(out_dir: str | Path) -> Comparison:
    """The comparison saved in `out_dir/results.json` (e.g. to write its report again)."""
    out = Path(out_dir).expanduser()
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    result = Comparison(config=CompareConfig(**data["config"]), out_dir=out, memory_rows=data["memory_rows"],
                        setup_s=data["setup_s"], seconds=data["seconds"], interrupted=data["interrupted"],
                        notes=list(data["notes"]), mode_setup=dict(data.get("mode_setup", {})))
    for mode, episodes in data["episodes"].items():
        result.episodes[mode] = [
            EpisodeResult(**{**e, "steps": [StepRecord(**s) for s in e["steps"]]}) for e in episodes
        ]
    return result


def merge_comparisons(parts: Sequence[Comparison], out_dir: str | Path) -> Comparison:
    """One comparison from runs of different modes on the same games (e.g. one process per core).

    The runs must agree on every setting but the modes and have played the same games in the same
    order; a mode may appear in one run only. The merged result is written to `out_dir` (results.json
    and the report).
    """
    if not parts:
        raise InvalidArgumentError("merge_comparisons needs at least one comparison")
    first = parts[0]
    settings = first.config.model_dump(exclude={"modes"})
    games = [e.game for e in next(iter(first.episodes.values()), [])]
    merged = Comparison(config=first.config, out_dir=Path(out_dir).expanduser(), memory_rows=first.memory_rows,
                        setup_s=max(p.setup_s for p in parts), seconds=sum(p.seconds for p in parts),
                        interrupted=any(p.interrupted for p in parts))
    for part in parts:
        if part.config.model_dump(exclude={"modes"}) != settings:
            raise InvalidArgumentError(f"{part.out_dir} was run with other settings than {first.out_dir}")
        for mode, episodes in part.episodes.items():
            if mode in merged.episodes:
                raise InvalidArgumentError(f"mode {mode!r} is in more than one of the runs to merge")
            if [e.game for e in episodes] != games[: len(episodes)]:
                raise InvalidArgumentError(f"{part.out_dir}: mode {mode!r} played other games than {first.out_dir}")
            merged.episodes[mode] = episodes
        merged.mode_setup.update(part.mode_setup)
        merged.notes += [f"{part.out_dir.name}: {note}" for note in part.notes]
    merged.config = first.config.model_copy(update={"modes": list(merged.episodes)})
    merged.notes.append("merged from separate runs of the same games: " + ", ".join(str(p.out_dir) for p in parts))
    merged.out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(merged.out_dir / "results.json", merged.to_dict())
    write_report(merged)
    return merged


def paired_summary(diffs: Sequence[float], *, seed: int = 0) -> dict[str, Any]:
    """Mean, standard deviation and a seeded 95% bootstrap interval of per-game differences."""
    values = np.asarray(diffs, dtype=float)
    return {
        "games": int(len(values)),
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "ci95": list(bootstrap_mean_ci(values, n_resamples=_BOOTSTRAP, confidence=0.95, seed=seed)),
        "better": int((values > 0).sum()),
        "worse": int((values < 0).sum()),
    }


def continual_summary(result: Comparison) -> dict[str, Any]:
    """Each mode along the stream of games it played, in play order: does it get better as it goes?

    Per mode: the games and their scores in stream order, the cumulative mean, the mean score of the
    first and of the second half (the first ⌊n/2⌋ and the last ⌊n/2⌋ played games; the middle one is
    left out when n is odd; games that could not start are left out) and `change` = second − first.
    Later games may simply be easier or harder, so `none` on the same games is the control:
    `vs_none` = change − none's change on the same two halves (the mean per-game difference to none
    over the second half minus over the first), with a seeded 95% bootstrap interval (each half
    resampled). It is None for `none` itself, and when `none` did not play every game of the halves.
    """
    base = {e.game: e.score for e in result.episodes.get("none", []) if e.outcome != "error"}
    rng = np.random.default_rng(result.config.seed)
    out: dict[str, Any] = {}
    for mode, episodes in result.episodes.items():
        played = [e for e in episodes if e.outcome != "error"]
        scores = [e.score for e in played]
        half = len(played) // 2
        first, second = played[:half], played[len(played) - half:]
        entry: dict[str, Any] = {
            "games": [e.game for e in played], "scores": scores,
            "cumulative_mean": [float(v) for v in np.cumsum(scores) / np.arange(1, len(scores) + 1)],
            "half": half, "first_half": None, "second_half": None, "change": None,
            "none_change": None, "vs_none": None, "vs_none_ci95": None,
        }
        if half:
            entry["first_half"] = float(np.mean([e.score for e in first]))
            entry["second_half"] = float(np.mean([e.score for e in second]))
            entry["change"] = entry["second_half"] - entry["first_half"]
            if all(e.game in base for e in first + second):
                none_first = float(np.mean([base[e.game] for e in first]))
                none_second = float(np.mean([base[e.game] for e in second]))
                entry["none_change"] = none_second - none_first
                if mode != "none":
                    d1 = np.array([e.score - base[e.game] for e in first], dtype=float)
                    d2 = np.array([e.score - base[e.game] for e in second], dtype=float)
                    entry["vs_none"] = float(d2.mean() - d1.mean())
                    draws = (rng.choice(d2, size=(_BOOTSTRAP, half)).mean(axis=1)
                             - rng.choice(d1, size=(_BOOTSTRAP, half)).mean(axis=1))
                    entry["vs_none_ci95"] = [float(v) for v in np.percentile(draws, [2.5, 97.5])]
        out[mode] = entry
    return out


def mode_totals(episodes: Sequence[EpisodeResult]) -> dict[str, Any]:
    """Totals of one mode over its games (games that could not start are counted apart)."""
    played = [e for e in episodes if e.outcome != "error"]
    steps: list[StepRecord] = [s for e in played for s in e.steps]
    scores = [e.score for e in played]
    expert = [s for s in steps if s.expert_bpb is not None]
    expert_bytes = sum(len((s.expert_action or "").encode("utf-8")) for s in expert)
    return {
        "games": len(played),
        "errors": len(episodes) - len(played),
        "score": int(sum(scores)),
        "max_score": int(sum(e.max_score for e in played)),
        "mean_score": float(np.mean(scores)) if scores else None,
        "sd_score": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
        "wins": sum(e.won for e in played),
        "steps": len(steps),
        "mean_steps": len(steps) / len(played) if played else None,
        "adapt_s": float(np.mean([s.adapt_s for s in steps])) if steps else None,
        "act_s": float(np.mean([s.act_s for s in steps])) if steps else None,
        "trained_per_step": float(np.mean([s.trained for s in steps])) if steps else None,
        "selected_per_step": float(np.mean([s.selected for s in steps])) if steps else None,
        "action_bpb": action_bpb(steps),
        "expert_bpb": (sum(s.expert_bpb * len((s.expert_action or "").encode("utf-8")) for s in expert) / expert_bytes
                       if expert_bytes else None),
        "expert_agreement": float(np.mean([bool(s.chose_expert) for s in expert])) if expert else None,
        "no_match": sum(s.no_match is not None for s in steps),
        "outcomes": {o: sum(e.outcome == o for e in episodes) for o in sorted({e.outcome for e in episodes})},
    }


# ---------------------------------------------------------------------------------------- running


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    from hullft_agent.files import write_atomic

    write_atomic(path, json.dumps(payload, indent=1, default=str))


def _fork_memory(base: Path, target: Path) -> None:
    """A fresh copy of the training memory for one mode (what an earlier run of the mode logged is gone)."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(base, target)


def run_comparison(
    config: CompareConfig,
    out_dir: str | Path,
    *,
    model: Any = None,
    embedder: Any = None,
    game_cache: str | Path | None = None,
    memory_dir: str | Path | None = None,
    progress: bool = True,
    on_episode: Callable[[str, EpisodeResult], None] | None = None,
    extra_games: Sequence[str | Path] = (),
) -> Comparison:
    """Run every mode of `config` on the same held-out games and write the report into `out_dir`.

    `model` is a `LoadedModel` (default: the packaged SmolLM2), `embedder` an embedder (default:
    the packaged MiniLM). The training memory and each mode's copy live in `memory_dir` (default
    `out_dir/memory`); a memory built there before is reused. `extra_games` are game files played after the generated ones (e.g. to show
    that a broken file is reported and skipped). A KeyboardInterrupt stops the run after marking
    the running episode `interrupted`; the report of what finished is still written, and the
    result says `interrupted`.
    """
    from tqdm.auto import tqdm

    from hullft_agent.adapter import TestTimeAdapter
    from hullft_agent.config import AdapterConfig, FinetuneConfig, SelectionConfig
    from hullft_agent.envs.textworld import build_textworld_memory_with_summary, generate_games
    from hullft_agent.memory import TrajectoryMemory
    from hullft_agent.runtime import Runtime

    started = time.perf_counter()
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    result = Comparison(config=config, out_dir=out)
    settings = config.cooking()
    if embedder is None:
        from hullft_agent.embedding import Embedder

        embedder = Embedder()
    memories = Path(memory_dir).expanduser() if memory_dir is not None else out / "memory"
    base_dir = memories / "train"
    base, summary = build_textworld_memory_with_summary(
        base_dir, "train", config.train_games, expert_episodes=config.expert_episodes,
        explore_episodes=config.explore_episodes, settings=settings, random_share=config.random_share,
        embedder=embedder, granularity="window", window=config.window, seed=config.seed,
        namespace=MEMORY_NAMESPACE, cache_dir=game_cache, progress=progress,
    )
    if any(mode in DECISION_MODES for mode in config.modes):
        _add_expert_decisions(base, generate_games("train", config.train_games, settings, game_cache,
                                                   seed0=config.seed, progress=False), config)
    result.memory_rows = base.count()
    bc_rows = _decision_rows(base) if "bc" in config.modes else []
    base.close()
    games = [*generate_games("test", config.test_games, settings, game_cache, seed0=config.seed, progress=progress),
             *(Path(g) for g in extra_games)]
    if model is None:
        from hullft_agent.models import load_model

        model = load_model()
    adapter_config = AdapterConfig(
        selection=SelectionConfig(method="hullft", n=config.n, k=config.k),
        finetune=FinetuneConfig(lr=config.lr, max_length=config.max_length, seed=config.seed),
        incremental=True,
    )
    adapter: TestTimeAdapter | None = None
    result.setup_s = time.perf_counter() - started
    logger.info("memory of %d rows from %d training games (%d episodes) ready in %.1f s", result.memory_rows,
                summary.games, summary.episodes, result.setup_s)
    results_file = out / "results.json"
    bc_name = Runtime(model).name  # the base model's name, as the other modes log it
    try:
        bc_model = _train_bc(model, bc_rows, config, result) if "bc" in config.modes else None
        for mode in config.modes:
            mode_dir = memories / mode
            _fork_memory(base_dir, mode_dir)
            memory = TrajectoryMemory.open(mode_dir, embedder=embedder, namespace=MEMORY_NAMESPACE)
            decisions = mode.startswith("decisions")
            if mode == "bc":  # the behaviour-cloned copy answers, unadapted; its steps are logged like the others'
                runtime = Runtime(bc_model, model.tokenizer, memory=memory, name=f"{bc_name}+bc")
            else:
                if adapter is None:
                    adapter = TestTimeAdapter(model, embedder=embedder, source=memory, config=adapter_config)
                adapter.forget_tasks()
                runtime = Runtime(adapter=adapter, memory=memory, source=memory, log_decisions=decisions)
            options = dict(MODES[mode])
            if decisions:
                options["finetune"] = adapter_config.finetune.model_copy(update={"max_length": config.decision_max_length})
            agent = TextWorldAgent(runtime, config.agent(), n=config.n, k=config.k, **options)
            episodes = result.episodes.setdefault(mode, [])
            for index, game in enumerate(games):
                with tqdm(total=None, desc=f"{mode:<9} game {index + 1}/{len(games)}", unit="cmd",
                          disable=not progress, leave=False) as bar:
                    def advance(step: StepRecord, bar: Any = bar) -> None:
                        bar.update(1)
                        bar.set_postfix(score=step.score, adapt=f"{step.adapt_s:.1f}s", act=f"{step.act_s:.1f}s")

                    try:
                        episode = agent.play(game, label=mode, on_step=advance)
                    except AgentInterrupted as exc:
                        episodes.append(exc.result)
                        raise
                episodes.append(episode)
                if on_episode is not None:
                    on_episode(mode, episode)
                result.seconds = time.perf_counter() - started
                _write_json(results_file, result.to_dict())
            memory.close()
    except KeyboardInterrupt:
        result.interrupted = True
        result.notes.append("interrupted by the user: the tables hold what finished")
        logger.warning("comparison interrupted; writing the report of what finished")
    result.seconds = time.perf_counter() - started
    _write_json(results_file, result.to_dict())
    write_report(result)
    return result


def _decision_rows(memory: Any) -> list[dict[str, Any]]:
    """Every decision row of won episodes in the memory (what the decision modes may select), in a fixed order."""
    n = memory.count()
    if not n:
        return []
    pool = memory.candidates(np.ones(memory.dim, dtype=np.float32), k=n, learn_from=LEARN_FROM_WINS,
                             fields=["episode_id", "step"], exact=True)
    return sorted(pool.metadata, key=lambda row: (row["episode_id"], row["step"]))


def _train_bc(model: Any, rows: list[dict[str, Any]], config: CompareConfig, result: Comparison) -> Any:
    """The `bc` mode's model: a copy of the base trained once on `rows` (the other modes keep the base weights)."""
    import copy

    from hullft_agent.config import FinetuneConfig
    from hullft_agent.finetune import behaviour_cloning

    if not rows:
        raise InvalidArgumentError("mode bc needs decision rows of won episodes in the training memory; it has none")
    started = time.perf_counter()
    logger.info("bc: training one LoRA on %d decision rows, %d epochs", len(rows), config.bc_epochs)
    finetune = FinetuneConfig(lr=config.lr, max_length=config.decision_max_length, seed=config.seed)
    bc = behaviour_cloning(copy.deepcopy(model.model), model.tokenizer, rows, finetune, fmt=DECISION_FORMAT,
                           epochs=config.bc_epochs, seed=config.seed)
    result.mode_setup["bc"] = {**bc.to_dict(), "seconds": time.perf_counter() - started}
    if not bc.train.ok:
        result.notes.append(f"bc: training stopped ({bc.train.stopped_reason}); bc played with the base model")
    return bc.model


def _add_expert_decisions(memory: Any, games: Sequence[Path], config: CompareConfig) -> None:
    """The walkthrough decisions of the training games (actor expert, outcome won), once per memory."""
    from hullft_agent.agents.walkthroughs import expert_decision, walkthrough_states

    logged = {e.episode_id for e in memory.episodes()}
    rows = [expert_decision(config.agent(), state) for game in games
            for state in walkthrough_states(game, answer="engine") if state.episode_id not in logged]
    if rows:
        memory.add(rows)


# ---------------------------------------------------------------------------------------- tables


def _fmt(value: Any, spec: str = ".2f", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[list[str]]:
    return [header, *rows]


def render_text(table: list[list[str]]) -> str:
    """A fixed-width text table (first column left-aligned, the others right-aligned)."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for n, row in enumerate(table):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(table: list[list[str]]) -> str:
    header, *rows = table
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def games_table(result: Comparison) -> list[list[str]]:
    """Per game: score/max, commands and outcome of every mode."""
    modes = list(result.episodes)
    order: list[str] = []
    for eps in result.episodes.values():
        order += [e.game_file for e in eps if e.game_file not in order]
    rows = []
    for game_file in order:
        row = [Path(game_file).stem]
        for mode in modes:
            ep = next((e for e in result.episodes[mode] if e.game_file == game_file), None)
            if ep is None:
                row.append("-")
            elif ep.outcome == "error":
                row.append("cannot start")
            else:
                row.append(f"{ep.score}/{ep.max_score} in {ep.moves} ({ep.outcome})")
        rows.append(row)
    return _table(["game", *modes], rows)


def totals_table(result: Comparison) -> list[list[str]]:
    """Per mode: total and mean score, wins, steps, one-off setup (bc's training), per-step latency (adapt / act)."""
    rows = []
    for mode, eps in result.episodes.items():
        t = mode_totals(eps)
        rows.append([
            mode, str(t["games"]), f"{t['score']}/{t['max_score']}",
            f"{_fmt(t['mean_score'])} ± {_fmt(t['sd_score'])}", str(t["wins"]), str(t["steps"]),
            _fmt(result.mode_setup.get(mode, {}).get("seconds"), ".0f"), _fmt(t["adapt_s"]), _fmt(t["act_s"]),
            f"{_fmt(t['trained_per_step'], '.1f')}/{_fmt(t['selected_per_step'], '.1f')}",
        ])
    return _table(["mode", "games", "score", "mean ± sd", "wins", "steps", "setup s (once)", "adapt s/step",
                   "act s/step", "trained/selected per step"], rows)


def continual_table(result: Comparison) -> list[list[str]]:
    """Per mode: scores in stream order, half means, their change, and the change against none's on the same games."""
    rows = []
    for mode, c in continual_summary(result).items():
        ci = c["vs_none_ci95"]
        rows.append([
            mode, " ".join(str(v) for v in c["scores"]) or "-", _fmt(c["first_half"]), _fmt(c["second_half"]),
            _fmt(c["change"], "+.2f"), _fmt(c["none_change"], "+.2f"),
            "-" if c["vs_none"] is None else f"{c['vs_none']:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]",
        ])
    return _table(["mode", "scores in stream order", "first half", "second half", "second − first",
                   "none's second − first", "− none's [95% CI]"], rows)


def bpb_table(result: Comparison) -> list[list[str]]:
    """Per mode: BPB of the chosen commands, BPB of the engine's next winning command, agreement with it."""
    rows = []
    for mode, eps in result.episodes.items():
        t = mode_totals(eps)
        agree = t["expert_agreement"]
        rows.append([mode, _fmt(t["action_bpb"], ".3f"), _fmt(t["expert_bpb"], ".3f"),
                     "-" if agree is None else f"{100 * agree:.0f}%"])
    return _table(["mode", "BPB chosen commands", "BPB expert commands", "chose the expert's command"], rows)


def differences_lines(result: Comparison) -> list[str]:
    lines = []
    for mode, d in result.differences().items():
        lines.append(
            f"{mode} - none: {d['mean']:+.2f} points per game (sd {d['sd']:.2f}, 95% bootstrap CI "
            f"[{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}], better on {d['better']}, worse on {d['worse']} "
            f"of {d['games']} games)"
        )
    return lines


def summary_text(result: Comparison) -> str:
    """The tables as the CLI prints them."""
    parts = ["per game (score/max in commands (outcome)):", render_text(games_table(result)), "",
             "totals (latency = mean seconds per command):", render_text(totals_table(result)), "",
             "bits per byte of the commands under each mode's model (lower is better):", render_text(bpb_table(result)),
             "", "continual: mean score of the second half of the stream minus the first, against none's on the same "
             "games:", render_text(continual_table(result))]
    diffs = differences_lines(result)
    if diffs:
        parts += ["", *diffs]
    parts += [f"{note}" for note in result.notes]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------- report


def _save_plot(plt: Any, fig: Any, ax: Any, ylabel: str, title: str, path: Path) -> str:
    """Label, save (120 dpi) and close one figure; return the file's name for the report."""
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def _plots(result: Comparison) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        result.notes.append('plots skipped: matplotlib is not installed (pip install "hullft-agent[bench]")')
        return []
    modes = list(result.episodes)
    files: list[str] = []
    games: list[str] = []
    for eps in result.episodes.values():
        games += [e.game_file for e in eps if e.game_file not in games and e.outcome != "error"]
    if games:
        fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(games) + 2), 3.6))
        width = 0.8 / len(modes)
        for m, mode in enumerate(modes):
            scores = []
            for g in games:
                ep = next((e for e in result.episodes[mode] if e.game_file == g), None)
                scores.append(ep.score if ep is not None and ep.outcome != "error" else np.nan)
            ax.bar(np.arange(len(games)) + (m - (len(modes) - 1) / 2) * width, scores, width, label=mode)
        ax.set_xticks(np.arange(len(games)), [Path(g).stem.replace("game-", "") for g in games], rotation=30)
        files.append(_save_plot(plt, fig, ax, "score", "score per held-out game", result.out_dir / "scores.png"))
    stream = continual_summary(result)
    if any(c["scores"] for c in stream.values()):
        longest = max(len(c["scores"]) for c in stream.values())
        fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * longest + 3), 3.6))
        for mode, c in stream.items():
            if not c["scores"]:
                continue
            x = np.arange(1, len(c["scores"]) + 1)
            (line,) = ax.plot(x, c["cumulative_mean"], marker=".", label=mode)
            ax.scatter(x, c["scores"], s=12, alpha=0.35, color=line.get_color())
        ax.set_xlabel("game in the stream (play order)")
        ax.set_xticks(np.arange(1, longest + 1))
        files.append(_save_plot(plt, fig, ax, "score (line: cumulative mean; dots: each game)",
                                "score along the stream of held-out games", result.out_dir / "continual.png"))
    totals = {mode: mode_totals(eps) for mode, eps in result.episodes.items()}
    shown = [m for m in modes if totals[m]["steps"]]
    if shown:
        fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(shown) + 1.5), 3.6))
        adapt = [totals[m]["adapt_s"] for m in shown]
        act = [totals[m]["act_s"] for m in shown]
        ax.bar(shown, adapt, label="adapt")
        ax.bar(shown, act, bottom=adapt, label="act (score commands)")
        files.append(_save_plot(plt, fig, ax, "seconds per command", "mean latency per command",
                                result.out_dir / "latency.png"))
    return files


def _choice_rule(c: CompareConfig) -> str:
    if c.strategy == "generate":
        return "Commands generated by the model and matched to the closest admissible one"
    how = "the best-scored command" if c.temperature == 0 else f"a command drawn ∝ exp(score / {c.temperature:g})"
    return f"Each step plays {how}, score = {c.scoring} of the command's token log-probabilities"


def write_report(result: Comparison) -> Path:
    """Write `report.md` (and the plots) into the comparison's folder; return the report's path."""
    plots = _plots(result)
    c = result.config
    lines = [
        "# TextWorld agent: adaptation modes side by side",
        "",
        f"{len(next(iter(result.episodes.values()), []))} held-out tw-cooking games (test split; recipe {c.recipe}, "
        f"take {c.take}, rooms {c.rooms}{', open' if c.open else ''}{', cook' if c.cook else ''}"
        f"{', cut' if c.cut else ''}), memory of {result.memory_rows} window rows (w = {c.window}) from "
        f"{c.train_games} training games ({c.expert_episodes} expert + {c.explore_episodes} exploring episodes "
        f"each), then the agent's own episodes. {_choice_rule(c)}; "
        f"N = {c.n}, K = {c.k}, lr {c.lr}, sequences ≤ {c.max_length} tokens, at most {c.max_steps} commands "
        f"(and {c.step_factor}× the walkthrough). Wall time {result.seconds:.0f} s (setup {result.setup_s:.0f} s).",
        "",
    ]
    if "bc" in result.mode_setup:
        bc = result.mode_setup["bc"]
        lines += [f"`bc` is offline behaviour cloning: one LoRA trained once before the games on the {bc['rows']} "
                  f"decision rows of won episodes in the training memory ({bc['epochs']} epochs, {bc['steps']} Adam "
                  f"steps, loss on the command, training prompts ≤ {c.decision_max_length} tokens) in "
                  f"{bc['seconds']:.0f} s, then fixed: no test-time selection.", ""]
    if result.interrupted:
        lines += ["**Interrupted**: the tables hold the games that finished (and the interrupted one).", ""]
    lines += ["## Per game", "", "score/max in commands (outcome)", "", render_markdown(games_table(result)), "",
              "## Totals", "", render_markdown(totals_table(result)), ""]
    diffs = differences_lines(result)
    if diffs:
        lines += [f"- {d}" for d in diffs] + [""]
    lines += ["## Bits per byte", "",
              "BPB of the commands the agent chose, and of the engine's next winning command at the same states, "
              "under each mode's (adapted) model.", "", render_markdown(bpb_table(result)), ""]
    lines += ["## Continual: the score along the stream", "",
              "Each mode plays the games in the same order and (except none and bc) can learn from its own earlier "
              "games. Halves: the first and the last ⌊n/2⌋ games. Later games can be easier or harder, so the "
              "change is compared with none's on the same games (95% bootstrap interval, each half resampled).", "",
              render_markdown(continual_table(result)), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    if result.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    path = result.out_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
