"""An agent that plays TextWorld cooking games through the core `Runtime` and learns from memory as it plays.

Each step the model sees the system prompt, the last `history` steps (observation, command) as chat
turns, the new observation, and a closing system turn with the objective and the admissible
commands; it picks one command with `Runtime.choose` (log-likelihood of each admissible command,
or free generation matched to one). Before that call the model adapts on memory (the runtime's
`TestTimeAdapter`, per_query or per_task), and the call logs the observation and the chosen command
to the memory as one commit, so later games (and, in per_task mode, later steps) can learn from it.

Faults: a game that cannot start gives an `EpisodeResult` with outcome `error` and writes nothing;
an empty admissible-command list ends the episode (outcome `no_commands`); a generated answer that
names no command is reported on its step and the best-scored command is played; a
KeyboardInterrupt marks the episode's logged rows `interrupted` and raises `AgentInterrupted` (a
KeyboardInterrupt) carrying the partial result. Every logged step is whole (observation and command
in one commit), so a later run simply starts a new episode.

The game engine is `hullft_agent.envs.textworld` (TextWorld is the `textworld` extra).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from hullft_agent.config import AdaptOverrides, DecisionFormat, StrictConfig
from hullft_agent.decisions import trim_prompt
from hullft_agent.errors import InvalidTypeError
from hullft_agent.runtime import DEFAULT_SCORING, Call, Runtime, SamplingParams, Scoring, Strategy, lock_for
from hullft_agent.runtime.prompt import ASSISTANT, SYSTEM, USER, Conversation

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are playing a text adventure game: cook a meal by following the recipe in the cookbook, then eat it. "
    "After each observation, reply with exactly one of the admissible commands and nothing else."
)
#: Outcomes an episode can end with (also written to the memory rows of the episode).
OUTCOMES = ("won", "lost", "max_steps", "no_commands", "interrupted", "error")


class AgentConfig(StrictConfig):
    """How the agent prompts, chooses and logs."""

    history: int = Field(3, ge=0, description="earlier steps (observation and command) shown as chat turns")
    max_steps: int = Field(30, ge=1, description="commands per episode at most")
    step_factor: float | None = Field(
        2.0, gt=0, description="also stop after this many times the walkthrough's length (None: no such cap)"
    )
    strategy: Strategy = Field("loglik", description="'loglik' ranks the admissible commands; 'generate' writes one")
    scoring: Scoring = Field(DEFAULT_SCORING, description="log-likelihood ranking: 'sum' or per-token 'mean'")
    temperature: float = Field(
        1.0, ge=0, description="0: play the best-scored command; T > 0: draw one with probability ∝ exp(score / T) "
        "(1 with 'sum': the model's own distribution over the admissible commands; a greedy agent loops)",
    )
    seed: int = Field(0, ge=0, description="seeds the draws: step s of game g always gets the same seed")
    avoid_repeats: int = Field(
        0, ge=0, description="choose among the admissible commands other than the last this many played (all of them "
        "when that leaves none): breaks the loops a greedy agent falls into (0: off)",
    )
    max_tokens: int = Field(16, ge=1, description="most tokens of a generated command (strategy 'generate')")
    generate_temperature: float = Field(
        0.0, ge=0, description="sampling temperature of a generated command (strategy 'generate'; 0: greedy)"
    )
    context_messages: int = Field(
        4, ge=1, description="the adaptation context: the last this many observations and commands of the prompt"
    )
    keep_recipe: bool = Field(
        False, description="once the cookbook is read, keep its recipe under every later observation (the last "
        "`history` steps forget it, and every later decision depends on it; off by default: SmolLM2-135M did not "
        "choose better with it, benchmarks/RESULTS.md)",
    )
    prompt_format: DecisionFormat | None = Field(
        None, description="the model answers the prompt trimmed to this format (the one decision rows train in), so "
        "it acts on what it was trained on; None: the whole prompt",
    )
    system_prompt: str = Field(SYSTEM_PROMPT, min_length=1)
    log: bool = Field(True, description="log every step to the runtime's memory")
    namespace: str | None = Field(None, description="memory namespace of the logged steps (default: the memory's)")


class AgentInterrupted(KeyboardInterrupt):  # noqa: N818  (it is a KeyboardInterrupt, named for what happened)
    """A KeyboardInterrupt during an episode; `result` is the episode so far (outcome `interrupted`)."""

    def __init__(self, result: EpisodeResult) -> None:
        super().__init__(f"interrupted after {result.moves} commands of {result.game}")
        self.result = result


@dataclass
class StepRecord:
    """One command: what was chosen, how the expert's command scored, what it cost."""

    step: int
    action: str
    n_admissible: int
    score: int
    adapt_s: float
    act_s: float
    action_bpb: float
    action_bytes: int
    expert_action: str | None = None
    expert_bpb: float | None = None
    chose_expert: bool | None = None
    adapted: bool = False
    selected: int = 0
    trained: int = 0
    passes: int = 0
    skip_reason: str | None = None
    generated: str | None = None
    no_match: str | None = None


@dataclass
class EpisodeResult:
    """One played game. `outcome` is one of `OUTCOMES`; `reason` says why the episode ended."""

    game: str
    game_file: str
    episode_id: str
    label: str
    outcome: str
    reason: str
    score: int = 0
    max_score: int = 0
    steps: list[StepRecord] = field(default_factory=list)
    seconds: float = 0.0
    logged_rows: int = 0
    step_limit: int = 0

    @property
    def won(self) -> bool:
        return self.outcome == "won"

    @property
    def moves(self) -> int:
        return len(self.steps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def action_bpb(steps: list[StepRecord]) -> float | None:
    """Byte-weighted bits per byte of the chosen commands of `steps` (None when there are none)."""
    total = sum(s.action_bytes for s in steps)
    return sum(s.action_bpb * s.action_bytes for s in steps) / total if total else None


def adaptation_context(conversation: Conversation, last: int) -> str:
    """The last `last` non-system texts of a prompt, the game text the adapter selects memory for."""
    texts = [m["content"].strip() for m in conversation if m["role"] != SYSTEM][-last:]
    return "\n".join(t for t in texts if t)


def read_recipe(text: str) -> str | None:
    """The recipe of a cookbook page in one line (`ingredients: ...; directions: ...`), or None.

    The cooking games print it as an `Ingredients:` and a `Directions:` block, one item a line.
    """
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if line.lower() in ("ingredients:", "directions:"):
            current = sections.setdefault(line[:-1].lower(), [])
        elif not line:
            current = None
        elif current is not None:
            current.append(line)
    if not sections.get("ingredients") or not sections.get("directions"):
        return None
    return f"ingredients: {', '.join(sections['ingredients'])}; directions: {', '.join(sections['directions'])}"


def agent_prompt(config: AgentConfig, history: list[tuple[str, str]], observation: str, objective: str,
                 admissible: list[str]) -> Conversation:
    """The prompt of one step: system prompt, recent turns, the observation, objective and commands.

    `history` is every earlier step of the episode (the prompt shows the last `config.history`); with
    `config.keep_recipe` the last recipe read in it follows the observation (unless the observation is
    the cookbook). The objective and the admissible commands go in a closing system turn, so the
    adaptation context (the last non-system messages) holds only game text and the recipe.
    """
    out = [{"role": SYSTEM, "content": config.system_prompt}]
    for seen, did in history[-config.history:] if config.history else []:
        out += [{"role": USER, "content": seen}, {"role": ASSISTANT, "content": did}]
    recipe = None
    if config.keep_recipe and read_recipe(observation) is None:
        recipe = next((r for r in (read_recipe(seen) for seen, _ in reversed(history)) if r), None)
    out.append({"role": USER, "content": f"{observation}\n\nRecipe: {recipe}" if recipe else observation})
    lines = [f"Objective: {objective}"] if objective else []
    lines.append("Admissible commands: " + "; ".join(admissible))
    lines.append("Reply with one admissible command.")
    out.append({"role": SYSTEM, "content": "\n".join(lines)})
    return out


def act_prompt(config: AgentConfig, conversation: Conversation) -> Conversation:
    """The prompt the model answers: `conversation` trimmed to `config.prompt_format` (None: all of it)."""
    return conversation if config.prompt_format is None else trim_prompt(conversation, config.prompt_format)


class TextWorldAgent:
    """Plays TextWorld games with a `Runtime`: adapt on memory, choose a command, log the step.

    >>> runtime = Runtime(adapter=adapter, memory=memory, source=memory)
    >>> agent = TextWorldAgent(runtime, AgentConfig(max_steps=20), method="hullft", mode="per_task", n=6)
    >>> result = agent.play(game_file)           # EpisodeResult: outcome, score, steps, timings

    The call options are `adapt` (False: the base model answers) and the `AdaptOverrides` fields
    (`method`, `mode`, `n`, `k`, `lr`, ...), applied to every call. Each episode is one memory
    episode (`<game>/agent/<label>-<id>`) and its task is the game, so per_task mode keeps one adapter
    per game across its steps, and the running episode is never in its own candidate pool.
    """

    def __init__(self, runtime: Runtime, config: AgentConfig | None = None, *, adapt: bool = True,
                 **overrides: Any) -> None:
        if not isinstance(runtime, Runtime):
            raise InvalidTypeError(f"runtime must be a hullft_agent.runtime.Runtime, got {type(runtime).__name__}")
        unknown = sorted(set(overrides) - set(AdaptOverrides.model_fields))
        if unknown:
            raise InvalidTypeError(
                f"unknown call option(s) {unknown}: the agent takes adapt and the AdaptOverrides fields "
                f"{sorted(AdaptOverrides.model_fields)}; task, episode, namespace, logging and the choice rule "
                "are set by the agent itself (AgentConfig)"
            )
        self.runtime = runtime
        self.config = config or AgentConfig()
        self.adapt = adapt
        self.overrides = AdaptOverrides(**overrides)

    # ------------------------------------------------------------------ prompt
    def conversation(self, history: list[tuple[str, str]], observation: str, objective: str,
                     admissible: list[str]) -> Conversation:
        """The prompt of one step (`agent_prompt` with this agent's configuration)."""
        return agent_prompt(self.config, history, observation, objective, admissible)

    # ------------------------------------------------------------------ playing
    def play(
        self,
        game_file: str | Path,
        *,
        label: str = "agent",
        episode_id: str | None = None,
        on_step: Callable[[StepRecord], None] | None = None,
    ) -> EpisodeResult:
        """Play one game to its end (won, lost, out of steps or of commands) and return the result.

        Raises `AgentInterrupted` on a KeyboardInterrupt, after marking what was logged `interrupted`.
        """
        from hullft_agent.envs.textworld import NO_OUTPUT, clean_observation, start_game
        from hullft_agent.errors import TextWorldEnvError

        started = time.perf_counter()
        path = Path(game_file)
        result = EpisodeResult(game=path.stem, game_file=str(path), episode_id="", label=label, outcome="error",
                               reason="")
        try:
            env, state = start_game(path)
        except (TextWorldEnvError, OSError) as exc:
            result.reason = f"cannot start the game: {exc}"
            logger.warning("skipping %s: %s", path, result.reason)
            result.seconds = time.perf_counter() - started
            return result
        try:
            game = str(state.get("extra.uuid") or path.stem)
            result.game = game
            result.episode_id = episode_id or f"{game}/agent/{label}-{uuid.uuid4().hex[:8]}"
            result.max_score = int(state["max_score"] or 0)
            walkthrough = list(state.get("extra.walkthrough") or [])
            limit = self.config.max_steps
            if self.config.step_factor is not None and walkthrough:
                limit = min(limit, math.ceil(self.config.step_factor * len(walkthrough)))
            result.step_limit = limit
            objective = str(state.get("objective") or "")
            observation = clean_observation(state.feedback)
            if objective and objective not in observation:
                observation = f"{objective}\n\n{observation}" if observation != NO_OUTPUT else objective
            history: list[tuple[str, str]] = []
            try:
                while True:
                    if state["won"] or state["lost"]:
                        result.outcome = "won" if state["won"] else "lost"
                        result.reason = f"the game was {result.outcome}"
                        break
                    if len(result.steps) >= limit:
                        result.outcome, result.reason = "max_steps", f"reached the step limit ({limit})"
                        break
                    admissible = sorted(set(state["admissible_commands"] or []))
                    if not admissible:
                        result.outcome = "no_commands"
                        result.reason = f"the game gave an empty admissible-command list after {len(result.steps)} commands"
                        logger.warning("%s: %s", game, result.reason)
                        break
                    record = self._step(result, history, observation, objective, admissible, state)
                    state, _, _ = env.step(record.action)
                    record.score = int(state["score"])
                    result.score = record.score
                    result.steps.append(record)
                    history.append((observation, record.action))
                    observation = clean_observation(state.feedback)
                    if on_step is not None:
                        on_step(record)
                self._finish(result, observation)
            except KeyboardInterrupt as exc:
                result.outcome = "interrupted"
                result.reason = f"interrupted after {len(result.steps)} commands"
                self._mark(result)
                result.seconds = time.perf_counter() - started
                raise AgentInterrupted(result) from exc
        finally:
            env.close()
        result.seconds = time.perf_counter() - started
        return result

    def _step(self, result: EpisodeResult, history: list[tuple[str, str]], observation: str, objective: str,
              admissible: list[str], state: Any) -> StepRecord:
        plan = list(state["policy_commands"] or [])
        expert = plan[0] if plan and plan[0] in admissible else None
        config = self.config
        conversation = self.conversation(history, observation, objective, admissible)
        call = Call(
            conversation=act_prompt(config, conversation),
            context=adaptation_context(conversation, config.context_messages),
            sampling=SamplingParams(
                max_new_tokens=config.max_tokens, temperature=config.generate_temperature,
                seed=zlib.crc32(f"{config.seed}/{result.game}/{len(result.steps)}".encode()),
                stop=["\n"] if config.strategy == "generate" else [],
            ),
            task=result.game,
            episode_id=result.episode_id,
            namespace=config.namespace,
            adapt=self.adapt,
            overrides=self.overrides,
            log=config.log,
            log_inputs=[self._observation_step(observation, {})],
            log_metadata={"policy": "agent", "agent": result.label, "step": len(result.steps)},
        )
        recent = {s.action for s in result.steps[-config.avoid_repeats:]} if config.avoid_repeats else set()
        choices = [c for c in admissible if c not in recent] or admissible
        choice = self.runtime.choose(call, choices, strategy=config.strategy, scoring=config.scoring,
                                     temperature=config.temperature)
        outcome = choice.call
        result.logged_rows += len(outcome.logged_ids)
        if outcome.log_error:
            logger.warning("%s step %d was not logged: %s", result.game, len(result.steps), outcome.log_error)
        timings = outcome.timings
        report = choice.report
        return StepRecord(
            step=len(result.steps),
            action=choice.text,
            n_admissible=len(admissible),
            score=result.score,
            adapt_s=float(timings.get("adapt", 0.0)),
            act_s=float(timings.get("score", 0.0) + timings.get("generate", 0.0)),
            action_bpb=choice.bpb(),
            action_bytes=len(choice.text.encode("utf-8")),
            expert_action=expert,
            expert_bpb=None if expert not in choices else choice.bpb(choices.index(expert)),
            chose_expert=None if expert is None else choice.text == expert,
            adapted=report.adapted,
            selected=sum(report.counts),
            trained=report.steps,
            passes=report.passes,
            skip_reason=report.skip_reason,
            generated=choice.generated,
            no_match=choice.no_match,
        )

    # ------------------------------------------------------------------ memory
    def _memory(self) -> Any:
        return self.runtime.memory if self.config.log else None

    def _observation_step(self, text: str, metadata: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "observation", "text": text,
                "metadata": {**metadata, "role": USER, "source": self.runtime.log_source}}

    def _finish(self, result: EpisodeResult, observation: str) -> None:
        """Log the last observation and write the episode's score and outcome onto all its rows."""
        memory = self._memory()
        if memory is None or not result.steps:
            return
        step = self._observation_step(observation, {"policy": "agent", "agent": result.label})
        with lock_for(memory):
            memory.log_step(result.episode_id, step["kind"], step["text"], task=result.game,
                            namespace=self.config.namespace, metadata=step["metadata"])
            result.logged_rows += 1
        self._mark(result)

    def _mark(self, result: EpisodeResult) -> None:
        memory = self._memory()
        if memory is None or not result.logged_rows:
            return
        with lock_for(memory):
            memory.finish_episode(result.episode_id, reward=float(result.score), outcome=result.outcome,
                                  namespace=self.config.namespace)
