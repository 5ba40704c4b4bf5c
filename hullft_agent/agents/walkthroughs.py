"""Decisions an expert makes: the walkthrough states of TextWorld games, as the agent would see them.

Each state is what `TextWorldAgent` would be shown at that point of the game's walkthrough (the
objective, the recent turns, the observation, the admissible commands) and the command the
walkthrough issues there. Training games' states become decision rows (actor `expert`, outcome
`won`) that decision-aware adaptation learns from; held-out games' states are the offline decision
benchmark (does the adapted model rank the expert's command first?).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hullft_agent.agents.textworld import AgentConfig, act_prompt, adaptation_context, agent_prompt
from hullft_agent.decisions import decision_step


@dataclass(frozen=True)
class WalkthroughState:
    """One walkthrough state: what the agent would see, and the expert's command there."""

    game: str
    index: int
    history: tuple[tuple[str, str], ...]
    observation: str
    objective: str
    admissible: tuple[str, ...]
    expert: str

    @property
    def episode_id(self) -> str:
        return f"{self.game}/walkthrough/decisions"


def walkthrough_states(game_file: str | Path, *, answer: Literal["walkthrough", "engine"] = "walkthrough"
                       ) -> list[WalkthroughState]:
    """The states along a game's walkthrough, up to the first command the engine does not admit.

    `answer` is the expert's command at each state: the walkthrough's own, or the first command of the
    engine's winning plan from that state (which skips the walkthrough's no-op moves such as `inventory`).
    """
    from hullft_agent.envs.textworld import NO_OUTPUT, clean_observation, start_game

    path = Path(game_file)
    env, state = start_game(path)
    states: list[WalkthroughState] = []
    try:
        game = str(state.get("extra.uuid") or path.stem)
        objective = str(state.get("objective") or "")
        observation = clean_observation(state.feedback)
        if objective and objective not in observation:
            observation = f"{objective}\n\n{observation}" if observation != NO_OUTPUT else objective
        history: list[tuple[str, str]] = []
        for command in state.get("extra.walkthrough") or []:
            admissible = sorted(set(state["admissible_commands"] or []))
            if command not in admissible or state["won"] or state["lost"]:
                break
            plan = list(state["policy_commands"] or [])
            expert = plan[0] if answer == "engine" and plan and plan[0] in admissible else command
            states.append(WalkthroughState(game, len(states), tuple(history), observation, objective,
                                           tuple(admissible), expert))
            state, _, _ = env.step(command)
            history.append((observation, command))
            observation = clean_observation(state.feedback)
    finally:
        env.close()
    return states


def state_prompt(config: AgentConfig, state: WalkthroughState) -> list[dict[str, str]]:
    """The chat prompt the model answers at this state (`act_prompt` of the agent's prompt)."""
    return act_prompt(config, _whole_prompt(config, state))


def state_context(config: AgentConfig, state: WalkthroughState) -> str:
    """The adaptation context (and a decision row's state text) of this state, from the whole prompt."""
    return adaptation_context(_whole_prompt(config, state), config.context_messages)


def _whole_prompt(config: AgentConfig, state: WalkthroughState) -> list[dict[str, str]]:
    return agent_prompt(config, list(state.history), state.observation, state.objective, list(state.admissible))


def expert_decision(config: AgentConfig, state: WalkthroughState) -> dict[str, Any]:
    """The decision row of the expert's command at this state (the episode is a win: outcome `won`)."""
    step = decision_step(state_context(config, state), state_prompt(config, state), state.expert, actor="expert",
                         metadata={"game": state.game, "walkthrough_step": state.index})
    return {**step, "outcome": "won", "episode_id": state.episode_id, "task": state.game}
