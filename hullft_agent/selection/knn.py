"""Nearest-neighbour selection: the candidates with the largest inner product with the query."""

from __future__ import annotations

import numpy as np

from hullft_agent.selection.types import Selection, check_inputs


def knn(candidates: np.ndarray, query: np.ndarray, n: int) -> Selection:
    """Pick the n candidates with the largest inner product <x_i, q>.

    With K >= n this is the plain top-n, each chosen once. With K < n all K candidates are chosen
    (in similarity order) and the n units are dealt round-robin over them, so the most similar
    `n % K` candidates get one unit more than the rest; the counts always sum to exactly n.
    `indices` are ordered by count (highest first), ties by similarity (highest first), and
    `weights = counts / n`.
    """
    X, q = check_inputs(candidates, query, n)
    K = X.shape[0]
    sims = X @ q
    m = min(n, K)
    if m < K:
        top = np.argpartition(-sims, m - 1)[:m]
    else:
        top = np.arange(K)
    # Stable sort on -sim: equal similarities keep the lower index first.
    order = top[np.argsort(-sims[top], kind="stable")]
    base, extra = divmod(n, m)
    counts = np.full(m, base, dtype=np.int64)
    counts[:extra] += 1
    return Selection(
        method="knn",
        indices=order.astype(np.int64),
        counts=counts,
        weights=counts / n,
        diagnostics={"similarities": sims[order]},
    )
