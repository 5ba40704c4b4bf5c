"""Deleting rows, versions and snapshots, compaction and the vector/scalar indexes."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import numpy as np

from hullft_agent.errors import InvalidArgumentError
from hullft_agent.memory.base import MemoryCore
from hullft_agent.memory.filters import scope
from hullft_agent.memory.queries import META_INDEX_PARTITIONS, vector_index
from hullft_agent.memory.schema import META_INDEX_ROWS, check_name, check_namespace

logger = logging.getLogger(__name__)

#: A vector index needs at least this many rows to train.
MIN_INDEX_ROWS = 256


class MaintenanceMixin(MemoryCore):
    """`forget`, versions (`checkout`, `pinned_to`, `refresh`), `optimize` and `create_index`."""

    _has_index: bool | None

    # ------------------------------------------------------------------ forgetting

    def forget(
        self,
        ids: str | Sequence[str] | None = None,
        *,
        episode_id: str | None = None,
        task: str | None = None,
        namespace: str | None = None,
    ) -> int:
        """Delete rows by ids, episode, task (ANDed) within a namespace; return how many were deleted.

        With no ids/episode/task it deletes the whole namespace, which must then be named
        explicitly (`namespace=...`; the default namespace is never wiped implicitly).
        """
        table = self._check_writable()
        if ids is None and episode_id is None and task is None and namespace is None:
            raise InvalidArgumentError(
                "forget() with no ids, episode_id or task deletes a whole namespace; "
                "pass namespace=... explicitly to do that"
            )
        ns = check_namespace(namespace) if namespace is not None else self.config.namespace
        id_list = None
        if ids is not None:
            id_list = [check_name(i, "id") for i in ([ids] if isinstance(ids, str) else list(ids))]
            if not id_list:
                return 0
        where = scope(
            ns,
            ids=id_list,
            episode_id=None if episode_id is None else check_name(episode_id, "episode_id"),
            task=None if task is None else check_name(task, "task"),
        )
        before = int(table.count_rows(where))
        if before == 0:
            return 0
        result = self._commit("delete from", lambda: table.delete(where))
        deleted = getattr(result, "num_deleted_rows", None)
        self._after_write()
        logger.info("forgot %s rows in namespace %r", deleted if deleted is not None else before, ns)
        return int(deleted) if deleted is not None else before

    # ------------------------------------------------------------------ versions

    @property
    def version(self) -> int:
        """The table version reads see (the pinned one after `checkout`)."""
        return int(self._live().version)

    @property
    def pinned(self) -> int | None:
        """The version this memory is pinned to, or None when it follows the latest."""
        return self._pinned

    def versions(self) -> list[dict[str, Any]]:
        """Every version still on storage: {'version', 'timestamp'}."""
        return [
            {"version": int(v["version"]), "timestamp": v["timestamp"]} for v in self._live().list_versions()
        ]

    def checkout(self, version: int) -> None:
        """Pin reads to `version` (an evaluation then sees a fixed snapshot); writes are refused."""
        if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
            raise InvalidArgumentError(f"version must be an integer >= 1, got {version!r}")
        try:
            self._live().checkout(int(version))
        except ValueError as exc:
            raise InvalidArgumentError(f"cannot check out version {version} of the memory: {exc}") from exc
        self._pinned = int(version)
        self._has_index = None

    def checkout_latest(self) -> None:
        """Unpin: follow the latest version again."""
        self._live().checkout_latest()
        self._pinned = None
        self._has_index = None

    @contextmanager
    def pinned_to(self, version: int | None = None) -> Iterator[Any]:
        """`with memory.pinned_to(v):` reads see version v (default: the current one) inside the block."""
        target = self.version if version is None else version
        self.checkout(target)
        try:
            yield self
        finally:
            self.checkout_latest()

    def refresh(self) -> None:
        """See other processes' commits now (otherwise within `read_consistency_interval`)."""
        if self._pinned is None:
            self._live().checkout_latest()

    # ------------------------------------------------------------------ compaction and indexes

    def optimize(self, *, cleanup_older_than: timedelta | float | None = None) -> dict[str, Any]:
        """Compact small fragments, fold new rows into the indexes, delete versions older than
        `cleanup_older_than` (seconds or timedelta; default `config.cleanup_older_than_s`), build
        or retrain the vector index when due. Runs automatically every `optimize_every` commits."""
        table = self._check_writable()
        if cleanup_older_than is None:
            cleanup = timedelta(seconds=self.config.cleanup_older_than_s)
        elif isinstance(cleanup_older_than, timedelta):
            cleanup = cleanup_older_than
        else:
            cleanup = timedelta(seconds=float(cleanup_older_than))
        before = len(table.list_versions())
        start = time.perf_counter()
        self._commit("optimize", lambda: table.optimize(cleanup_older_than=cleanup))
        after = len(table.list_versions())
        indexed = self._maybe_index(retrain=True)
        seconds = time.perf_counter() - start
        logger.info("optimized memory in %.2f s (versions %d -> %d)", seconds, before, after)
        return {
            "versions_before": before,
            "versions_after": after,
            "index_built": indexed,
            "seconds": seconds,
        }

    def _maybe_index(self, *, retrain: bool = False) -> bool:
        table = self._table
        if table is None or self._pinned is not None:
            return False
        rows = table.count_rows()
        if rows < max(self.config.index_threshold, MIN_INDEX_ROWS):
            return False
        if self._has_index and not retrain:
            return False
        index = vector_index(table)
        self._has_index = index is not None
        if index is not None:
            if not retrain:
                return False
            meta = table.schema.field("vector").metadata or {}
            trained = int(meta.get(META_INDEX_ROWS.encode(), b"0") or 0)
            if trained and rows < self.config.reindex_growth * trained:
                return False
        try:
            self.create_index()
        except Exception as exc:  # another process may be indexing; the next write retries
            logger.warning("building the vector index failed (queries stay exact): %s", exc)
            return False
        return True

    def create_index(self) -> dict[str, Any]:
        """(Re)build the vector index (`config.index_type`, cosine) and scalar indexes on
        namespace, kind, task, episode_id and id. Called automatically past `index_threshold` rows."""
        from lancedb import index as lidx

        table = self._check_writable()
        rows = table.count_rows()
        if rows < MIN_INDEX_ROWS:
            raise InvalidArgumentError(f"the memory holds {rows} rows; a vector index needs at least {MIN_INDEX_ROWS}")
        params = dict(self.config.index_params)
        kind = self.config.index_type
        classes = {
            "IVF_FLAT": lidx.IvfFlat,
            "IVF_SQ": lidx.IvfSq,
            "IVF_PQ": lidx.IvfPq,
            "IVF_RQ": lidx.IvfRq,
            "IVF_HNSW_SQ": lidx.HnswSq,
            "IVF_HNSW_PQ": lidx.HnswPq,
        }
        if "num_partitions" not in params:
            if "HNSW" in kind:
                params["num_partitions"] = 1
            else:
                params["num_partitions"] = int(max(1, min(4096, rows // 32, round(math.sqrt(rows)))))
        start = time.perf_counter()
        self._commit(
            "index",
            lambda: table.create_index(
                "vector", config=classes[kind](distance_type="cosine", **params), replace=True
            ),
        )
        for column, scalar in (
            ("namespace", lidx.Bitmap()),
            ("kind", lidx.Bitmap()),
            ("task", lidx.BTree()),
            ("episode_id", lidx.BTree()),
            ("id", lidx.BTree()),
        ):
            self._commit(
                "index",
                lambda c=column, cfg=scalar: table.create_index(c, config=cfg, replace=True),
            )
        try:
            table.update_field_metadata(
                {
                    "path": "vector",
                    "metadata": {
                        META_INDEX_ROWS: str(rows),
                        META_INDEX_PARTITIONS: str(params["num_partitions"]),
                    },
                }
            )
        except Exception as exc:  # only a retraining hint; not every backend supports it
            logger.debug("could not record index size: %s", exc)
        self._has_index = True
        seconds = time.perf_counter() - start
        logger.info("built %s index over %d rows in %.1f s (%s)", kind, rows, seconds, params)
        return {"type": kind, "rows": rows, "params": params, "seconds": seconds}
