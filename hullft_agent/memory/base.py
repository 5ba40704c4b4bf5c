"""State and helpers every part of `TrajectoryMemory` shares: the open table, namespaces, embedding,
plain selects and retried commits.

`TrajectoryMemory` is assembled from one mixin per concern (writing, queries, stats, maintenance)
on top of `MemoryCore`; the mixins call each other's methods through `self`.
"""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import pyarrow as pa

from hullft_agent.errors import EmbedderRequiredError, MemoryPinnedError
from hullft_agent.memory.config import MemoryConfig
from hullft_agent.memory.lance_errors import is_conflict, permission_error
from hullft_agent.memory.schema import ALL_NAMESPACES, check_namespace

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: Episodes (and validated where clauses) whose state a memory keeps in its LRU caches.
CACHE_ENTRIES = 10_000


@runtime_checkable
class TextEmbedder(Protocol):
    """What the memory needs of an embedder (`hullft_agent.embedding.Embedder` satisfies it)."""

    model_name: str
    dim: int

    def encode(self, texts: str | list[str]) -> np.ndarray: ...


def remember_lru(cache: OrderedDict, key: Any, value: Any) -> None:
    """Set `cache[key]`, most recent last, dropping the oldest entries past `CACHE_ENTRIES`."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > CACHE_ENTRIES:
        cache.popitem(last=False)


def select(table: Any, where: str | None, columns: list[str], limit: int | None = None) -> pa.Table:
    """A plain filtered scan of `columns` (no vector search)."""
    query = table.search()
    if where is not None:
        query = query.where(where)
    return query.select(columns).limit(limit).to_arrow()


class MemoryCore:
    """The shared state: settings, the lancedb table, the table's stamped embedder and layout."""

    config: MemoryConfig
    _embedder: TextEmbedder | None
    _db: Any
    _table: Any
    _pinned: int | None
    _dim: int
    _embedder_name: str
    _granularity: str
    _window: int

    def _live(self) -> Any:
        if self._table is None:
            raise RuntimeError("this TrajectoryMemory is closed")
        return self._table

    def _check_writable(self) -> Any:
        table = self._live()
        if self._pinned is not None:
            raise MemoryPinnedError(
                f"memory is pinned to version {self._pinned}; call checkout_latest() before writing"
            )
        return table

    def _ns(self, namespace: str | None, *, allow_all: bool = False) -> str | None:
        if namespace is None:
            return self.config.namespace
        if allow_all and namespace == ALL_NAMESPACES:
            return None
        return check_namespace(namespace)

    def _need_embedder(self, why: str) -> TextEmbedder:
        if self._embedder is None:
            raise EmbedderRequiredError(f"{why} needs an embedder; open the memory with embedder=...")
        return self._embedder

    def _embed(self, texts: list[str]) -> np.ndarray:
        embedder = self._need_embedder("embedding text")
        vectors = np.asarray(embedder.encode(list(texts)), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(texts), self._dim):
            raise RuntimeError(
                f"embedder {self._embedder_name!r} returned shape {vectors.shape}, expected ({len(texts)}, {self._dim})"
            )
        norms = np.linalg.norm(vectors, axis=1)
        bad = ~np.isfinite(vectors).all(axis=1) | (norms == 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise RuntimeError(f"embedder returned a NaN/inf or zero vector for text {i}: {texts[i]!r:.80}")
        return vectors / norms[:, None]

    def _commit(self, what: str, fn: Callable[[], T]) -> T:
        """Run one table commit (`what`: "append to", "update", ...), retrying conflicts against the
        latest version (see `commit_with_retries`)."""

        def follow_latest() -> None:
            if self._table is not None and self._pinned is None:
                self._table.checkout_latest()  # retry against the version that won

        return commit_with_retries(
            what, fn, retries=self.config.commit_retries, location=self.config.uri, before_retry=follow_latest
        )


def commit_with_retries(
    what: str,
    fn: Callable[[], T],
    *,
    retries: int,
    location: str,
    before_retry: Callable[[], None] | None = None,
) -> T:
    """Run one Lance commit (`what`: "append to", "update", ...), retrying with backoff when a
    concurrent commit won the race (`before_retry` re-reads the latest version); a refused write
    becomes a `MemoryPermissionError`. Shared by every table hullft writes."""
    delay = 0.05
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as exc:  # lancedb raises RuntimeError/OSError/ValueError subclasses
            refused = permission_error(exc, what, location)
            if refused is not None:
                raise refused from exc
            if attempt >= retries or not is_conflict(exc):
                raise
            logger.warning("commit (%s) hit a conflict (attempt %d/%d): %s", what, attempt + 1, retries, exc)
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)
            if before_retry is not None:
                before_retry()
    raise AssertionError("unreachable")
