"""The leakage guard: a unit's candidates never come from its own episode (nor, optionally, its task).

`GuardedSource` is the candidate source an evaluation hands the adapter. It drops the current unit's
episode (and with `exclude_task` its task) from every pool, checks every pool and every selection,
and raises `LeakageError` if the inner source ever returns such a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hullft_agent.candidates import CandidatePool, CandidateSource, InMemoryCandidates
from hullft_agent.errors import InvalidArgumentError, InvalidTypeError, LeakageError
from hullft_agent.evaluation.units import EvalUnit


def _episode_of(meta: dict[str, Any]) -> Any:
    for key in ("episode_id", "episode"):
        if key in meta:
            return meta[key]
    raise LeakageError(
        "the candidate source does not report each candidate's episode (metadata 'episode_id' or 'episode'), "
        "so the leakage guard cannot check it; use a TrajectoryMemory or InMemoryCandidates(episodes=...)"
    )


class GuardedSource:
    """The candidate source of an evaluation: excludes the current unit's episode (and task), checks.

    `begin(unit)` sets the unit; `candidates` then drops its episode (and with `exclude_task` its task)
    whatever the adapter asks, and raises `LeakageError` if the inner source returns such a row anyway.
    """

    def __init__(self, source: CandidateSource, *, namespace: str | None = None, exclude_task: bool = False) -> None:
        if not isinstance(source, CandidateSource):
            raise InvalidTypeError(f"source must implement CandidateSource.candidates(...), got {type(source).__name__}")
        self.source = source
        self.namespace = namespace
        self.exclude_task = exclude_task
        self.unit: EvalUnit | None = None
        self.last_pool: CandidatePool | None = None
        from hullft_agent.memory.store import TrajectoryMemory

        self._is_memory = isinstance(source, TrajectoryMemory)
        if exclude_task and not (self._is_memory or isinstance(source, InMemoryCandidates)):
            raise InvalidArgumentError("exclude_task needs a TrajectoryMemory or an InMemoryCandidates source")

    def begin(self, unit: EvalUnit) -> None:
        self.unit = unit
        self.last_pool = None

    def candidates(
        self, vector: np.ndarray, k: int, *, task: str | None = None, exclude_episode: str | None = None
    ) -> CandidatePool:
        unit = self.unit
        if unit is None:
            raise RuntimeError("GuardedSource.candidates called before begin(unit)")
        episode = unit.episode if unit.episode is not None else exclude_episode
        drop_task = unit.task if self.exclude_task else None
        if self._is_memory:
            where = None
            if drop_task is not None:
                from lancedb.expr import col, lit

                where = f"(task IS NULL OR {(col('task') != lit(drop_task)).to_sql()})"
            pool = self.source.candidates(  # type: ignore[call-arg]
                vector, k, namespace=self.namespace, task=task, exclude_episode=episode, where=where,
                fields=["episode_id", "task"],
            )
        elif drop_task is not None and isinstance(self.source, InMemoryCandidates):
            pool = self.source.candidates(vector, k, task=task, exclude_episode=episode, exclude_task=drop_task)
        else:
            pool = self.source.candidates(vector, k, task=task, exclude_episode=episode)
        self._check_pool(pool, unit)
        self.last_pool = pool
        return pool

    def _check_pool(self, pool: CandidatePool, unit: EvalUnit) -> None:
        if len(pool) == 0 or (unit.episode is None and not (self.exclude_task and unit.task is not None)):
            return
        if len(pool.metadata) != len(pool):
            raise LeakageError("the candidate pool carries no metadata; the leakage guard cannot check it")
        for cid, meta in zip(pool.ids, pool.metadata, strict=True):
            if unit.episode is not None and _episode_of(meta) == unit.episode:
                raise LeakageError(f"candidate {cid!r} comes from the unit's own episode {unit.episode!r}")
            if self.exclude_task and unit.task is not None and meta.get("task") == unit.task:
                raise LeakageError(f"candidate {cid!r} comes from the unit's own task {unit.task!r} (exclude_task)")

    def check_selected(self, selected_ids: Sequence[str]) -> None:
        """Every selected id must come from the last (checked) pool."""
        if not selected_ids:
            return
        pool_ids = set(self.last_pool.ids) if self.last_pool is not None else set()
        stray = [i for i in selected_ids if i not in pool_ids]
        if stray:
            raise LeakageError(f"selected id(s) {stray[:5]} are not in the unit's checked candidate pool")
