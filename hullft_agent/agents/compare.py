"""Adaptation modes side by side: the TextWorld agent on the same held-out games, with a report.

`run_comparison` generates a small set of tw-cooking games, builds a trajectory memory from the
expert and exploring episodes of the training games, and lets a `TextWorldAgent` play the held-out
(test-split, or `split`) games once per mode:

- `none`: the base model, no adaptation;
- `per_query`: HullFT selection and a fresh LoRA adaptation before every command;
- `per_task`: HullFT, one adapter per game kept across its commands, trained incrementally (each
  command trains only the selected rows the game's adapter has not been trained on yet);
- `knn`: nearest-neighbour selection, per_query;
- `decisions`, `decisions_query`: per_task and per_query HullFT on decision rows of won episodes;
  `decisions_knn`: the same as `decisions` with nearest-neighbour selection (HullFT against kNN, all
  else equal);
- `bc`: offline behaviour cloning, one LoRA trained once before the games on every decision row of
  the training memory (`hullft_agent.finetune.behaviour_cloning`), then fixed: no test-time
  selection, so the report shows what selecting per step adds over training once;
- `bc_decisions`: both: the behaviour-cloned model (its LoRA merged into the weights) adapted per game
  like `decisions`.

Every mode starts from its own copy of the training memory and logs its own episodes into it, so
later games can learn from earlier ones (continual learning) without one mode seeing another's
episodes. Results are written as they come (`results.json`), then `report.md` with the per-game,
total, BPB, latency and continual tables and PNG plots (matplotlib, the `bench` extra). The
continual table follows each mode along the stream of games: the second half's mean score minus
the first half's, against the same difference under `none` (games differ in difficulty, so the same
games played without adaptation are the control).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
from hullft_agent.config import DECISION_FORMATS, DecisionFormat, LearnFrom, StrictConfig
from hullft_agent.errors import InvalidArgumentError
from hullft_agent.evaluation.report import bootstrap_mean_ci
from hullft_agent.runtime import DEFAULT_SCORING, Scoring, Strategy

logger = logging.getLogger(__name__)

#: Call options of each mode (TextWorldAgent keyword arguments: adapt and adaptation overrides).
#: Decision modes train on decision rows (prompt -> command, loss on the command) of won episodes only:
#: the experts' walkthroughs of the training games, then the agent's own won games.
LEARN_FROM_WINS = LearnFrom(kinds=["decision"], outcomes=["won"])
#: Training prompts without the system prompt and with two earlier messages (bench_decisions' format study).
DECISION_FORMAT = DECISION_FORMATS["nosys-h1"]
MODES: dict[str, dict[str, Any]] = {
    "none": {"adapt": False},
    "per_query": {"method": "hullft", "mode": "per_query"},
    "per_task": {"method": "hullft", "mode": "per_task"},
    "knn": {"method": "knn", "mode": "per_query"},
    "decisions": {"method": "hullft", "mode": "per_task", "learn_from": LEARN_FROM_WINS},
    "decisions_query": {"method": "hullft", "mode": "per_query", "learn_from": LEARN_FROM_WINS},
    "decisions_knn": {"method": "knn", "mode": "per_task", "learn_from": LEARN_FROM_WINS},
    # the agent plays unadapted, on a model trained once before the games (see run_comparison)
    "bc": {"adapt": False},
    # per_task decision HullFT on top of that model: trained once offline, then adapted per game
    "bc_decisions": {"method": "hullft", "mode": "per_task", "learn_from": LEARN_FROM_WINS},
}
#: Modes that train on decision rows at test time.
ADAPTING_DECISION_MODES = ("decisions", "decisions_query", "decisions_knn", "bc_decisions")
#: Modes whose memory needs the training games' walkthrough decisions (decision rows, actor expert, won).
DECISION_MODES = (*ADAPTING_DECISION_MODES, "bc")
#: Modes that play on the behaviour-cloned model.
BC_MODES = ("bc", "bc_decisions")
MEMORY_NAMESPACE = "textworld"
_BOOTSTRAP = 2000


class CompareConfig(StrictConfig):
    """Sizes and settings of a comparison; the defaults are the `make demo` run (the CLI's only source of them)."""

    modes: list[str] = Field(default_factory=lambda: ["none", "decisions", "bc_decisions"], min_length=1)
    train_games: int = Field(6, ge=1, description="training games whose episodes fill the memory")
    test_games: int = Field(3, ge=1, description="held-out games the agent plays per mode")
    split: Literal["valid", "test"] = Field("test", description="split of the played games (tune on 'valid')")
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
    lora_layers: int | None = Field(None, ge=1, description="test-time LoRA on the last this many blocks (None: all)")
    max_instances: int | None = Field(
        None, ge=1, description="adapting modes train at most this many instances per command (None: all selected)"
    )
    max_length: int = Field(128, ge=8, description="training sequences are cut to this many tokens")
    decision_max_length: int = Field(
        384, ge=8, description="decision modes and bc: training prompts are cut (oldest tokens first) to this many tokens"
    )
    bc_epochs: int = Field(2, ge=1, description="bc: passes over the training memory's decision rows")
    expert_answers: Literal["walkthrough", "engine"] = Field(
        "walkthrough", description="the answer of a training game's walkthrough decision: the walkthrough's command "
        "(it reads the cookbook), or the engine's next winning command (which skips no-op moves, and the cookbook)",
    )
    max_steps: int = Field(30, ge=1)
    step_factor: float | None = Field(2.0, gt=0)
    history: int = Field(3, ge=0)
    keep_recipe: bool = Field(True, description="the agent's prompt keeps the cookbook's recipe once read")
    prompt_format: DecisionFormat | None = Field(
        DECISION_FORMAT, description="the agent answers its prompt trimmed to this format, and the decision modes and "
        "bc train in it (None: the agent answers the whole prompt, training uses DECISION_FORMAT)",
    )
    strategy: Strategy = "loglik"
    scoring: Scoring = DEFAULT_SCORING
    temperature: float = Field(0.0, ge=0, description="command choice: 0 greedy, T > 0 drawn ∝ exp(score / T)")
    seed: int = Field(0, ge=0)
    avoid_repeats: int = Field(2, ge=0, description="the agent does not replay its last this many commands (0: off)")

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

    def training_format(self) -> DecisionFormat:
        """How decision rows are rendered for training: as the agent is answered, when that is trimmed."""
        return self.prompt_format or DECISION_FORMAT

    def cooking(self) -> Any:
        from hullft_agent.envs.textworld import CookingSettings

        return CookingSettings(recipe=self.recipe, take=self.take, rooms=self.rooms, open=self.open,
                               cook=self.cook, cut=self.cut, max_steps=self.max_steps)

    def agent(self) -> AgentConfig:
        return AgentConfig(history=self.history, keep_recipe=self.keep_recipe, prompt_format=self.prompt_format,
                           max_steps=self.max_steps,
                           step_factor=self.step_factor, strategy=self.strategy, scoring=self.scoring,
                           temperature=self.temperature, seed=self.seed, avoid_repeats=self.avoid_repeats)


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
    from hullft_agent.agents.report import write_report

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
    from hullft_agent.config import AdapterConfig, FinetuneConfig, LoRAConfig, SelectionConfig
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
    bc_rows = _decision_rows(base) if set(BC_MODES) & set(config.modes) else []
    base.close()
    games = [*generate_games(config.split, config.test_games, settings, game_cache, seed0=config.seed,
                             progress=progress),
             *(Path(g) for g in extra_games)]
    if model is None:
        from hullft_agent.models import load_model

        model = load_model()
    adapter_config = AdapterConfig(
        selection=SelectionConfig(method="hullft", n=config.n, k=config.k),
        finetune=FinetuneConfig(lr=config.lr, max_length=config.max_length, seed=config.seed,
                                lora=LoRAConfig(layers=config.lora_layers)),
        incremental=True,
        max_instances=config.max_instances,
    )
    adapter: TestTimeAdapter | None = None
    result.setup_s = time.perf_counter() - started
    logger.info("memory of %d rows from %d training games (%d episodes) ready in %.1f s", result.memory_rows,
                summary.games, summary.episodes, result.setup_s)
    results_file = out / "results.json"
    bc_name = Runtime(model).name  # the base model's name, as the other modes log it
    try:
        bc_model = _train_bc(model, bc_rows, config, result) if bc_rows else None
        for mode in config.modes:
            mode_dir = memories / mode
            _fork_memory(base_dir, mode_dir)
            memory = TrajectoryMemory.open(mode_dir, embedder=embedder, namespace=MEMORY_NAMESPACE)
            decisions = mode in ADAPTING_DECISION_MODES
            if mode == "bc":  # the behaviour-cloned copy answers, unadapted; its steps are logged like the others'
                runtime = Runtime(bc_model, model.tokenizer, memory=memory, name=f"{bc_name}+bc")
            elif mode == "bc_decisions":  # its own copy: the adapter wraps the model it is given in place
                warm = TestTimeAdapter(copy.deepcopy(bc_model), model.tokenizer, embedder=embedder, source=memory,
                                       config=adapter_config)
                runtime = Runtime(adapter=warm, memory=memory, source=memory, log_decisions=True,
                                  name=f"{bc_name}+bc")
            else:
                if adapter is None:
                    adapter = TestTimeAdapter(model, embedder=embedder, source=memory, config=adapter_config)
                adapter.forget_tasks()
                runtime = Runtime(adapter=adapter, memory=memory, source=memory, log_decisions=decisions)
            options = dict(MODES[mode])
            if decisions:
                options["finetune"] = adapter_config.finetune.model_copy(update={"max_length": config.decision_max_length})
                options["decision_format"] = config.training_format()
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
    from hullft_agent.agents.report import write_report

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
    """The `bc` modes' model: a copy of the base trained once on `rows`, its LoRA merged into the weights (the
    other modes keep the base weights)."""
    from hullft_agent.config import FinetuneConfig
    from hullft_agent.finetune import behaviour_cloning

    if not rows:
        raise InvalidArgumentError("mode bc needs decision rows of won episodes in the training memory; it has none")
    started = time.perf_counter()
    logger.info("bc: training one LoRA on %d decision rows, %d epochs", len(rows), config.bc_epochs)
    finetune = FinetuneConfig(lr=config.lr, max_length=config.decision_max_length, seed=config.seed)
    bc = behaviour_cloning(copy.deepcopy(model.model), model.tokenizer, rows, finetune, fmt=config.training_format(),
                           epochs=config.bc_epochs, seed=config.seed)
    setup = {**bc.to_dict(), "seconds": time.perf_counter() - started}
    result.mode_setup.update({mode: setup for mode in BC_MODES if mode in config.modes})
    if not bc.train.ok:
        result.notes.append(f"bc: training stopped ({bc.train.stopped_reason}); bc played with the base model")
    return bc.merged()


def _add_expert_decisions(memory: Any, games: Sequence[Path], config: CompareConfig) -> None:
    """The walkthrough decisions of the training games (actor expert, outcome won), once per memory."""
    from hullft_agent.agents.walkthroughs import expert_decision, walkthrough_states

    logged = {e.episode_id for e in memory.episodes()}
    rows = [expert_decision(config.agent(), state) for game in games
            for state in walkthrough_states(game, answer=config.expert_answers) if state.episode_id not in logged]
    if rows:
        memory.add(rows)
