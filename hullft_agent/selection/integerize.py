"""Geometric integerization: turn fractional support weights into integer counts summing to n.

Finds counts c >= 0 on the support, sum(c) = n, that keep the empirical mean close to the query:

    L(c) = ||q - (1/n) sum_i c_i x_i||^2.

1. **Start.** floor(n * w), then the remaining units are added one at a time, each where it lowers
   L most (greedy fill). Adding a unit to i changes L by -(2/n) <R, x_i> + ||x_i||^2 / n^2, with
   R = q - (1/n) sum c x the current residual. The largest-remainder rounding of n * w is also
   scored, and the better of the two starts is kept, so the result is never worse than it.
2. **Refinement.** Single-unit moves (one unit from i with c_i > 0 to j) change L by

       dL(i, j) = -(2/n) <R, x_j - x_i> + ||x_j - x_i||^2 / n^2,

   evaluated for all (i, j) at once from a = [<R, x_i>] and the support Gram matrix. A *pass*
   applies the best improving move, updates a in O(m), and repeats, up to m moves (m = support
   size); the refinement runs up to `passes` passes and ends early as soon as no move improves
   L, since the state is then a local minimum for every later pass too.

Only the m x m support Gram matrix is formed; L is never recomputed from scratch.
"""

from __future__ import annotations

import numpy as np

from hullft_agent.selection.types import check_inputs


def check_passes(passes: int) -> None:
    if isinstance(passes, bool) or not isinstance(passes, (int, np.integer)) or passes < 0:
        raise ValueError(f"passes must be an integer >= 0, got {passes!r}")


def integerize(
    candidates: np.ndarray,
    query: np.ndarray,
    support: np.ndarray,
    weights: np.ndarray,
    n: int,
    passes: int = 2,
) -> np.ndarray:
    """Integer counts (int64, aligned with `support`, sum n) minimising L(c); see the module docstring.

    `support` are distinct candidate indices and `weights` their non-negative fractional weights
    (normalised to sum 1 here). Counts may be 0 for some support entries.
    """
    X, q = check_inputs(candidates, query, n)
    check_passes(passes)
    K = X.shape[0]
    S = np.asarray(support)
    if S.ndim != 1 or S.size == 0 or not np.issubdtype(S.dtype, np.integer):
        raise ValueError(f"support must be a non-empty 1-D integer array, got {S!r}")
    if S.min() < 0 or S.max() >= K or np.unique(S).size != S.size:
        raise ValueError(f"support must hold distinct indices in [0, {K}), got {S!r}")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != S.shape:
        raise ValueError(f"weights must have the support's shape {S.shape}, got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    Xs = X[S]
    return _integerize(Xs @ Xs.T, Xs @ q, w / w.sum(), int(n), int(passes))


def _integerize(G: np.ndarray, bq: np.ndarray, w: np.ndarray, n: int, passes: int) -> np.ndarray:
    """Core of `integerize`: support Gram matrix `G` (m x m), `bq` = [<x_i, q>], weights `w` (sum 1).

    Works on u = (2/n) a with a_i = <R, x_i>: a unit added to (taken from) candidate k changes u by
    -G2[k] (+G2[k]), G2 = (2/n^2) G (G is symmetric, so rows serve as columns).
    """
    m = G.shape[0]
    inv_n = 1.0 / n
    inv_n2 = inv_n * inv_n
    dn = inv_n2 * G.diagonal()  # ||x_i||^2 / n^2
    G2 = (2.0 * inv_n2) * G
    bq_n = inv_n * bq

    nw = n * w
    base = np.floor(nw).astype(np.int64)
    missing = n - int(base.sum())

    # Greedy fill from the floor: adding a unit to i changes L by score_i = ||x_i||^2 / n^2 - u_i.
    c = base.copy()
    u = 2.0 * bq_n - G2 @ c
    if missing > 0:
        score = dn - u
        for _ in range(missing):
            i = int(score.argmin())
            c[i] += 1
            score += G2[i]
        u = dn - score
        # Largest-remainder rounding; keep it instead if it is strictly better.
        lr = base
        lr[np.argsort(base - nw, kind="stable")[:missing]] += 1
        if not np.array_equal(lr, c):
            u_lr = 2.0 * bq_n - G2 @ lr
            # L(c) - ||q||^2 = -<c, bq>/n - <c, u>/2 (from a = bq - G c / n).
            if float(lr @ (bq_n + 0.5 * u_lr)) > float(c @ (bq_n + 0.5 * u)):
                c, u = lr, u_lr
    elif missing < 0:  # only reachable through round-off in n * w: take units off greedily
        for _ in range(-missing):
            i = int(np.where(c > 0, u + dn, np.inf).argmin())
            c[i] -= 1
            u += G2[i]

    if passes == 0 or m < 2:
        return c

    # delta[i, j] = dL of moving one unit i -> j = u_i - u_j + ||x_j - x_i||^2 / n^2; rows with
    # c_i = 0 are barred by an infinite row penalty.
    Q = np.add.outer(dn, dn)
    Q -= G2
    eps = 1e-12 * (float(np.abs(u).max()) + float(dn.max())) + 1e-300
    bar = np.where(c > 0, 0.0, np.inf)
    delta = np.empty((m, m), dtype=np.float64)
    subtract_outer = np.subtract.outer
    for _ in range(passes * m):
        subtract_outer(u + bar, u, out=delta)
        delta += Q
        k = int(delta.argmin())
        i, j = divmod(k, m)
        if not delta[i, j] < -eps:
            break
        c[i] -= 1
        c[j] += 1
        if c[i] == 0:
            bar[i] = np.inf
        bar[j] = 0.0
        u += G2[i]
        u -= G2[j]
    return c
