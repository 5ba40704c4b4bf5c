"""`hullft-agent episodes textworld ...`: build a trajectory memory from played TextWorld games.

The main CLI calls `add_episodes_commands(subparsers)`; each subcommand sets `func(args) -> int`.
TextWorld is imported only when the command runs, so the main CLI works without the extra.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hullft_agent.errors import EmbedderMismatchError, EmbedderRequiredError
from hullft_agent.memory import cli as memory_cli
from hullft_agent.memory.config import default_memory_uri
from hullft_agent.memory.store import TrajectoryMemory

_SPLITS = ("train", "valid", "test")


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _table_embedder(uri: str, table: str) -> str | None:
    """The embedder an existing table was written with (None for a new table)."""
    from hullft_agent.memory.config import MemoryConfig

    try:
        return TrajectoryMemory(MemoryConfig(uri=uri, table=table)).embedder_name
    except EmbedderRequiredError:
        return None


def _cmd_textworld(args: argparse.Namespace) -> int:
    try:
        from hullft_agent.envs.textworld import CookingSettings, build_textworld_memory_with_summary
        from hullft_agent.errors import TextWorldEnvError
    except ImportError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    try:
        values = {
            name: getattr(args, name)
            for name in ("recipe", "take", "rooms", "open", "cook", "cut", "drop", "max_steps")
            if getattr(args, name) is not None
        }
        settings = CookingSettings(**values)
        model = args.embedder if args.embedder is not None else _table_embedder(args.out, args.table)
        embedder = memory_cli.make_embedder(model)
        memory, summary = build_textworld_memory_with_summary(
            args.out,
            args.split,
            args.games,
            expert_episodes=args.expert,
            explore_episodes=args.explore,
            settings=settings,
            random_share=args.random_share,
            embedder=embedder,
            granularity=args.granularity,
            window=args.window,
            seed=args.seed,
            namespace=args.namespace,
            table=args.table,
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
        )
    except (ValueError, TypeError, FileNotFoundError, EmbedderMismatchError, TextWorldEnvError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    _out(
        f"memory     {memory.uri}/{memory.table_name} (namespace {memory.namespace!r}, version {memory.version})"
    )
    _out(
        f"games      {summary.games} tw-cooking {args.split} games "
        f"(recipe {settings.recipe}, take {settings.take}, rooms {settings.rooms}"
        + "".join(f", {flag}" for flag in ("open", "cook", "cut", "drop") if getattr(settings, flag))
        + f"), ready in {summary.games_generated_s:.1f} s"
    )
    _out(f"episodes   {summary.episodes} logged, {summary.skipped} already in the memory")
    for policy, stats in summary.by_policy.items():
        n = max(stats["episodes"], 1)
        _out(
            f"  {policy:<8} {stats['episodes']} episodes, {stats['wins']} won, "
            f"{stats['moves'] / n:.1f} commands per episode"
        )
    _out(f"rows       {summary.rows} written ({memory.granularity}), {memory.count()} in the namespace")
    _out(f"wins       {summary.wins} of {summary.episodes}")
    _out(f"time       {summary.seconds:.1f} s")
    return 0


def add_episodes_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add `episodes textworld` to the main CLI's subparsers; return the `episodes` parser."""
    episodes = subparsers.add_parser("episodes", help="build a trajectory memory from real agent episodes")
    sub = episodes.add_subparsers(dest="episodes_command", metavar="{textworld}")
    sub.required = True

    p = sub.add_parser(
        "textworld",
        help="generate TextWorld cooking games, play them (expert and exploring) and log the episodes",
        description="Generate tw-cooking games offline (cached), play each with the walkthrough (expert) and "
        "with random admissible commands inserted (explore), and log every step into a trajectory memory. "
        'Needs pip install "hullft-agent[textworld]".',
    )
    p.add_argument("--split", choices=_SPLITS, default="train", help="game distribution (default train)")
    p.add_argument("--games", type=int, default=40, help="how many games (default 40)")
    p.add_argument(
        "--out",
        default=default_memory_uri(),
        help="memory location (default $HULLFT_MEMORY_URI or ./hullft_memory)",
    )
    p.add_argument("--table", default="trajectories", help="table name (default trajectories)")
    p.add_argument("--namespace", default=None, help="namespace (default 'default')")
    p.add_argument("--expert", type=int, default=1, help="expert episodes per game (default 1)")
    p.add_argument("--explore", type=int, default=2, help="exploring episodes per game (default 2)")
    p.add_argument(
        "--random-share",
        type=float,
        default=0.3,
        help="probability that an exploring episode's command is a random admissible one (default 0.3)",
    )
    p.add_argument("--granularity", choices=["step", "window"], default=None, help="for a new table")
    p.add_argument("--window", type=int, default=None, help="steps per window (granularity window)")
    p.add_argument("--seed", type=int, default=0, help="first game seed and explore seed (default 0)")
    p.add_argument(
        "--embedder", default=None, help="embedder model (default: the table's, else all-MiniLM-L6-v2)"
    )
    p.add_argument("--cache-dir", default=None, help="game cache (default <hullft cache>/textworld)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group(
        "game settings (tw-make tw-cooking options; defaults: recipe 2, take 2, rooms 6, open, cook, cut)"
    )
    g.add_argument("--recipe", type=int, default=None, help="ingredients in the recipe (1-5)")
    g.add_argument("--take", type=int, default=None, help="ingredients to find (<= recipe)")
    g.add_argument(
        "--rooms", "--go", dest="rooms", type=int, choices=[1, 6, 9, 12], default=None, help="locations"
    )
    for flag, what in (
        ("open", "containers and doors must be opened"),
        ("cook", "ingredients must be cooked"),
        ("cut", "ingredients must be cut"),
        ("drop", "the inventory is limited"),
    ):
        g.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=None, help=what)
    g.add_argument("--max-steps", type=int, default=None, help="commands per episode at most (default 100)")
    p.set_defaults(func=_cmd_textworld)
    return episodes
