"""TextWorld cooking games, generated offline into a cache folder once and reused.

`generate_games` makes `tw-cooking` games (the First TextWorld Problems family) from fixed seeds:
game `index` of a split has the TextWorld seed `seed0 + 1_000_000 * {train: 0, valid: 1, test: 2}[split]
+ index`, so the same game can be made by hand with `tw-make tw-cooking ... --split SPLIT --seed SEED`
(`CookingSettings.tw_make_command`). A game is written atomically, so a generation killed halfway never
leaves a half file that would be reused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from hullft_agent.config import StrictConfig, default_cache_dir
from hullft_agent.errors import InvalidArgumentError, InvalidTypeError, TextWorldEnvError
from hullft_agent.files import write_json_atomic

INSTALL_HINT = 'TextWorld is not installed; install the optional extra: pip install "hullft-agent[textworld]"'

if importlib.util.find_spec("textworld") is None:
    raise ImportError(INSTALL_HINT, name="textworld")

logger = logging.getLogger(__name__)

#: Game distributions of tw-cooking: foods and their preparations are split three ways.
SPLITS: tuple[str, ...] = ("train", "valid", "test")
#: Seeds of the splits are this far apart, so splits never share a seed.
SPLIT_SEED_STRIDE = 1_000_000

_STALE_TEMP_S = 3600.0


def import_textworld() -> Any:
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
            raise InvalidArgumentError(f"take ({self.take}) must be <= recipe ({self.recipe})")
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
            "split": check_split(split),
        }

    def tw_make_command(self, split: str, seed: int, output: str = "game.z8") -> list[str]:
        """The `tw-make` command line that makes the same game by hand."""
        cmd = ["tw-make", "tw-cooking", "--recipe", str(self.recipe), "--take", str(self.take)]
        cmd += ["--go", str(self.rooms)]
        cmd += [f"--{flag}" for flag in ("open", "cook", "cut", "drop") if getattr(self, flag)]
        cmd += ["--split", check_split(split), "--seed", str(seed), "--output", output]
        return cmd

    def key(self) -> str:
        """A short hash of the game settings and the TextWorld version: the cache folder's name."""
        payload = {"challenge": "tw-cooking", "textworld": _textworld_version(), **self.game_settings()}
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()
        return digest[:12]


def check_split(split: Any) -> str:
    """`split`, refused early when tw-cooking has no such split (TextWorld's own error is obscure)."""
    if split not in SPLITS:
        raise InvalidArgumentError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return str(split)


def check_count(value: Any, what: str, minimum: int) -> int:
    """`value` as an int >= `minimum`, or an error naming `what` (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidTypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise InvalidArgumentError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def game_seed(split: str, index: int, seed0: int = 0) -> int:
    """The TextWorld seed of game `index` of `split`: `seed0 + 1_000_000 * split_number + index`."""
    split = check_split(split)
    index = check_count(index, "index", 0)
    seed0 = check_count(seed0, "seed0", 0)
    if index >= SPLIT_SEED_STRIDE:
        raise InvalidArgumentError(f"index must be < {SPLIT_SEED_STRIDE}, got {index}")
    seed = seed0 + SPLIT_SEED_STRIDE * SPLITS.index(split) + index
    if seed >= 2**32:
        raise InvalidArgumentError(f"seed0 {seed0} is too large: TextWorld seeds must be < 2**32")
    return seed


def games_dir(
    split: str, settings: CookingSettings | None = None, cache_dir: str | Path | None = None
) -> Path:
    """`<cache_dir>/<settings key>/<split>/`; `cache_dir` defaults to `<hullft cache>/textworld`."""
    settings = settings or CookingSettings()
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "textworld"
    return root / settings.key() / check_split(split)


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
    tw = import_textworld()
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
    split = check_split(split)
    n_games = check_count(n_games, "n_games", 1)
    seed0 = check_count(seed0, "seed0", 0)
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
