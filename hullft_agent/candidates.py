"""Where an adapter gets its candidate pool: a protocol, and an in-memory implementation.

The LanceDB `TrajectoryMemory` implements the same protocol, so the adapter never depends on storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from hullft_agent.config import LearnFrom
from hullft_agent.errors import InvalidArgumentError


@dataclass(frozen=True)
class CandidatePool:
    """K candidates for one query: ids, the texts a model trains on, unit-norm vectors, similarities."""

    ids: list[str]
    texts: list[str]
    vectors: np.ndarray
    similarities: np.ndarray
    metadata: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        k = len(self.ids)
        if len(self.texts) != k or self.vectors.shape[0] != k or self.similarities.shape[0] != k:
            raise InvalidArgumentError(
                f"CandidatePool fields disagree in length: {k} ids, {len(self.texts)} texts, "
                f"{self.vectors.shape[0]} vectors, {self.similarities.shape[0]} similarities"
            )

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls, dim: int) -> CandidatePool:
        return cls([], [], np.zeros((0, dim), dtype=np.float32), np.zeros(0, dtype=np.float32))


@runtime_checkable
class CandidateSource(Protocol):
    """Anything that returns the k rows nearest a query vector, minus an excluded episode."""

    def candidates(
        self,
        vector: np.ndarray,
        k: int,
        *,
        task: str | None = None,
        exclude_episode: str | None = None,
    ) -> CandidatePool: ...


def check_query(vector: np.ndarray, k: Any, dim: int) -> np.ndarray:
    """A candidate query: `k` an integer >= 1 and `vector` one finite vector of dimension `dim` (float32)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidArgumentError(f"k must be an integer >= 1, got {k!r}")
    return check_vectors(np.asarray(vector).reshape(1, -1), dim, what="query vector")[0]


def check_vectors(vectors: np.ndarray, dim: int | None = None, what: str = "vectors") -> np.ndarray:
    """Return `vectors` as a float32 (n, d) array or raise naming the first bad row."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise InvalidArgumentError(f"{what} must be a 2-D (n, d) array, got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise InvalidArgumentError(f"{what} must have dimension {dim}, got {array.shape[1]}")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        raise InvalidArgumentError(f"{what} row {int(np.argmin(finite))} contains NaN or inf")
    return array


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InvalidArgumentError(f"vector row {int(np.argmin(norms[:, 0]))} is all zeros and cannot be normalised")
    return (vectors / norms).astype(np.float32)


class InMemoryCandidates:
    """A candidate source over a list of texts, embedded once (or given precomputed embeddings).

    Brute-force inner-product search; fine for pools up to ~10^5 rows. `episodes` and `tasks`
    (optional, one per text) let `candidates` exclude an episode or restrict to a task; `rows`
    (optional, one dict per text with `kind`, `reward`, `outcome`, `metadata`, as a memory row has)
    let it keep only what a `LearnFrom` asks for, and carry decision rows to the adapter.
    """

    def __init__(
        self,
        texts: Sequence[str],
        embeddings: np.ndarray | None = None,
        *,
        embedder: Any = None,
        ids: Sequence[str] | None = None,
        episodes: Sequence[str | None] | None = None,
        tasks: Sequence[str | None] | None = None,
        rows: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InvalidArgumentError(f"texts[{i}] must be a non-empty string, got {text!r:.60}")
        if embeddings is None:
            if embedder is None:
                raise InvalidArgumentError("InMemoryCandidates needs either precomputed embeddings or an embedder")
            embeddings = embedder.encode(texts) if texts else np.zeros((0, embedder.dim), np.float32)
        vectors = check_vectors(embeddings, what="embeddings")
        if vectors.shape[0] != len(texts):
            raise InvalidArgumentError(f"got {len(texts)} texts but {vectors.shape[0]} embeddings")
        self.texts = texts
        self.vectors = _normalise(vectors) if len(texts) else vectors
        self.ids = [str(i) for i in (ids if ids is not None else range(len(texts)))]
        self.episodes = list(episodes) if episodes is not None else [None] * len(texts)
        self.tasks = list(tasks) if tasks is not None else [None] * len(texts)
        self.rows = [dict(r) for r in rows] if rows is not None else [{} for _ in texts]
        for name, values in (("ids", self.ids), ("episodes", self.episodes), ("tasks", self.tasks),
                             ("rows", self.rows)):
            if len(values) != len(texts):
                raise InvalidArgumentError(f"{name} has {len(values)} entries but there are {len(texts)} texts")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.texts)

    def candidates(
        self,
        vector: np.ndarray,
        k: int,
        *,
        task: str | None = None,
        exclude_episode: str | None = None,
        exclude_task: str | None = None,
        learn_from: LearnFrom | None = None,
    ) -> CandidatePool:
        """The k rows most similar to `vector`, optionally restricted to `task` and to what `learn_from`
        keeps, without the rows of `exclude_episode` and `exclude_task` (evaluations that must not
        train on the same game)."""
        query = check_query(vector, k, self.dim)
        keep = np.ones(len(self.texts), dtype=bool)
        if exclude_episode is not None:
            keep &= np.array([e != exclude_episode for e in self.episodes], dtype=bool)
        if task is not None:
            keep &= np.array([t == task for t in self.tasks], dtype=bool)
        if exclude_task is not None:
            keep &= np.array([t != exclude_task for t in self.tasks], dtype=bool)
        if learn_from is not None:
            if learn_from.where is not None:
                raise InvalidArgumentError("InMemoryCandidates cannot apply a SQL `where`; use a TrajectoryMemory")
            keep &= np.array([_learns_from(row, learn_from) for row in self.rows], dtype=bool)
        rows = np.flatnonzero(keep)
        if rows.size == 0:
            return CandidatePool.empty(self.dim)
        sims = self.vectors[rows] @ query
        top = np.argsort(-sims, kind="stable")[:k]
        chosen = rows[top]
        return CandidatePool(
            ids=[self.ids[i] for i in chosen],
            texts=[self.texts[i] for i in chosen],
            vectors=self.vectors[chosen],
            similarities=sims[top].astype(np.float32),
            metadata=[{**self.rows[i], "episode": self.episodes[i], "task": self.tasks[i]} for i in chosen],
        )


def _learns_from(row: dict[str, Any], learn_from: LearnFrom) -> bool:
    """Whether a row passes every condition of `learn_from` (the in-memory twin of the memory's SQL filter)."""
    if learn_from.kinds is not None and row.get("kind") not in learn_from.kinds:
        return False
    if learn_from.outcomes is not None and row.get("outcome") not in learn_from.outcomes:
        return False
    if learn_from.min_reward is not None and (row.get("reward") is None or row["reward"] < learn_from.min_reward):
        return False
    actor = (row.get("metadata") or {}).get("actor")
    return learn_from.actors is None or actor in learn_from.actors
