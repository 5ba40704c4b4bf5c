"""The result type every selector returns, and the input checks they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Selection:
    """A finetuning multiset drawn from a candidate pool.

    `indices` point into the candidate rows, highest weight first; `counts[i]` is how many times
    candidate `indices[i]` is trained on, and `counts.sum()` equals the requested n exactly.
    `weights` are the selector's fractional weights (for kNN and SIFT, counts / n).
    """

    method: str
    indices: np.ndarray
    counts: np.ndarray
    weights: np.ndarray
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def support_size(self) -> int:
        return int(len(self.indices))


def check_inputs(candidates: np.ndarray, query: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (K, d) candidate matrix, a (d,) query and n >= 1; return float64 copies."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    X = np.asarray(candidates, dtype=np.float64)
    q = np.asarray(query, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 1:
        raise ValueError(f"candidates must be a non-empty (K, d) matrix, got shape {X.shape}")
    if q.ndim != 1 or q.shape[0] != X.shape[1]:
        raise ValueError(f"query must be a vector of dimension {X.shape[1]} (the candidates' d), got shape {q.shape}")
    if not np.isfinite(X).all():
        bad = int(np.argwhere(~np.isfinite(X).all(axis=1))[0, 0])
        raise ValueError(f"candidates contain NaN or inf (first bad row: {bad})")
    if not np.isfinite(q).all():
        raise ValueError("query contains NaN or inf")
    return X, q
