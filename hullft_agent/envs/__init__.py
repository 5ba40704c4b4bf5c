"""Environments that produce real agent episodes for the trajectory memory.

`hullft_agent.envs.textworld` generates TextWorld cooking games offline, plays them with an expert
(walkthrough) or an exploring policy, and logs the episodes into a `TrajectoryMemory`. It needs the
optional extra: `pip install "hullft-agent[textworld]"`. The names below are imported on first use,
so `import hullft_agent.envs` works without TextWorld installed.
"""

from __future__ import annotations

import importlib
from typing import Any

_TEXTWORLD_NAMES = (
    "BuildSummary",
    "CookingSettings",
    "Episode",
    "TextWorldEnvError",
    "SPLITS",
    "POLICIES",
    "build_textworld_memory",
    "build_textworld_memory_with_summary",
    "clean_observation",
    "game_seed",
    "games_dir",
    "generate_games",
    "log_episodes",
    "play_episode",
    "start_game",
)

__all__ = list(_TEXTWORLD_NAMES)


def __getattr__(name: str) -> Any:
    if name in _TEXTWORLD_NAMES:
        module = importlib.import_module("hullft_agent.envs.textworld")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
