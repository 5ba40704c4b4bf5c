"""What a memory holds: row counts, episode summaries, and a stats report (index, versions, storage)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import pyarrow.compute as pc

from hullft_agent.memory.base import MemoryCore, select
from hullft_agent.memory.filters import scope
from hullft_agent.memory.queries import index_type_name, vector_index
from hullft_agent.memory.schema import ALL_NAMESPACES, check_name

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpisodeSummary:
    """One logged episode: how many rows it holds, its step range, reward and outcome, and when."""

    namespace: str
    episode_id: str
    task: str | None
    rows: int
    first_step: int
    last_step: int
    reward: float | None
    outcome: str | None
    started_at: datetime
    ended_at: datetime

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["ended_at"] = self.ended_at.isoformat()
        return data


class StatsMixin(MemoryCore):
    """`count`, `episodes` and `stats`."""

    def count(
        self,
        namespace: str | None = None,
        *,
        task: str | None = None,
        episode_id: str | None = None,
        where: str | None = None,
    ) -> int:
        """Rows in a namespace (default: the memory's; '*' counts every namespace)."""
        table = self._live()
        base = scope(
            self._ns(namespace, allow_all=True),
            task=None if task is None else check_name(task, "task"),
            episode_id=None if episode_id is None else check_name(episode_id, "episode_id"),
        )
        filt = self._check_where(table, where, base)
        return int(table.count_rows(filt) if filt else table.count_rows())

    def episodes(self, namespace: str | None = None, *, task: str | None = None) -> list[EpisodeSummary]:
        """Summaries of the logged episodes of a namespace ('*': all), oldest first."""
        table = self._live()
        base = scope(
            self._ns(namespace, allow_all=True), task=None if task is None else check_name(task, "task")
        )
        found = select(
            table, base, ["namespace", "episode_id", "task", "step", "reward", "outcome", "created_at"]
        )
        if found.num_rows == 0:
            return []
        grouped = found.group_by(["namespace", "episode_id"]).aggregate(
            [
                ("step", "count"),
                ("step", "min"),
                ("step", "max"),
                ("task", "max"),
                ("reward", "max"),
                ("outcome", "max"),
                ("created_at", "min"),
                ("created_at", "max"),
            ]
        )
        out = [
            EpisodeSummary(
                namespace=r["namespace"],
                episode_id=r["episode_id"],
                task=r["task_max"],
                rows=int(r["step_count"]),
                first_step=int(r["step_min"]),
                last_step=int(r["step_max"]),
                reward=r["reward_max"],
                outcome=r["outcome_max"],
                started_at=r["created_at_min"],
                ended_at=r["created_at_max"],
            )
            for r in grouped.to_pylist()
        ]
        out.sort(key=lambda e: (e.started_at, e.namespace, e.episode_id))
        return out

    def stats(self, namespace: str | None = ALL_NAMESPACES) -> dict[str, Any]:
        """What the memory holds: rows, episodes, namespaces, kinds, bytes, index, version, embedder."""
        table = self._live()
        ns = self._ns(namespace, allow_all=True)
        found = select(table, scope(ns), ["namespace", "episode_id", "kind", "n_bytes"])
        namespaces: dict[str, int] = {}
        kinds: dict[str, int] = {}
        if found.num_rows:
            for r in found.group_by("namespace").aggregate([("n_bytes", "count")]).to_pylist():
                namespaces[r["namespace"]] = int(r["n_bytes_count"])
            for r in found.group_by("kind").aggregate([("n_bytes", "count")]).to_pylist():
                kinds[r["kind"]] = int(r["n_bytes_count"])
            episodes = found.group_by(["namespace", "episode_id"]).aggregate([]).num_rows
            text_bytes = int(pc.sum(found["n_bytes"]).as_py())
        else:
            episodes, text_bytes = 0, 0
        disk, fragments = self._storage(table)
        return {
            "uri": self.uri,
            "table": self.table_name,
            "namespace": namespace if namespace is not None else self.namespace,
            "version": self.version,
            "pinned": self._pinned is not None,
            "embedder": self._embedder_name,
            "dim": self._dim,
            "granularity": self._granularity,
            "window": self._window,
            "rows": int(found.num_rows),
            "total_rows": int(table.count_rows()),
            "episodes": int(episodes),
            "namespaces": dict(sorted(namespaces.items())),
            "kinds": dict(sorted(kinds.items())),
            "text_bytes": text_bytes,
            "disk_bytes": disk,
            "fragments": fragments,
            "index": self._index_info(table),
        }

    @staticmethod
    def _index_info(table: Any) -> dict[str, Any] | None:
        index = vector_index(table)
        if index is None:
            return None
        info: dict[str, Any] = {"type": index_type_name(index), "name": index.name}
        try:
            istats = table.index_stats(index.name)
            if istats is not None:
                info["indexed_rows"] = int(istats.num_indexed_rows)
                info["unindexed_rows"] = int(istats.num_unindexed_rows)
        except Exception as exc:  # not every backend reports index statistics
            logger.debug("index_stats failed: %s", exc)
        return info

    @staticmethod
    def _storage(table: Any) -> tuple[int | None, int | None]:
        """Bytes on storage and data fragments (None where the backend does not report them)."""
        disk = fragments = None
        try:
            tstats = table.stats()
            disk = int(tstats["total_bytes"]) if isinstance(tstats, Mapping) else int(tstats.total_bytes)
            fragments = tstats["fragment_stats"]["num_fragments"] if isinstance(tstats, Mapping) else None
        except Exception as exc:  # remote tables may not report storage statistics
            logger.debug("table.stats failed: %s", exc)
        return disk, fragments
