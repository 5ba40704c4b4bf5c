"""SIFT: greedy posterior-variance reduction of the query under a linear kernel.

Hübotter et al., "Efficiently Learning at Test-Time: Active Fine-Tuning of LLMs" (ICLR 2025).
The model is a Gaussian process with kernel k(x, x') = <x, x'> and observation noise of variance
`lam`. After observing the (multi)set S, the posterior variance of the query is

    sigma^2(q | S) = k(q, q) - k_qS (K_SS + lam I)^{-1} k_Sq.

Each step picks the candidate whose (noisy) observation lowers that variance most, then conditions
the kernel on it. A candidate may be picked again: its conditioned variance shrinks each time, so
repeats happen only when they are still the most informative choice.

Implementation: the kernel over the K candidates plus the query, conditioned on the picks so far,
is kept implicitly as Z Z^T - U^T U (Z = [X; q], U one row per pick), i.e. a pivoted, noisy
Cholesky factorisation. Each step costs one (K+1) x d matvec plus one (K+1) x t product (t picks
so far); the full Gram matrix is never formed and nothing is re-solved from scratch.
"""

from __future__ import annotations

import numpy as np

from hullft_agent.selection.types import Selection, check_inputs


def sift(candidates: np.ndarray, query: np.ndarray, n: int, lam: float = 0.2) -> Selection:
    """Select an n-unit multiset by SIFT with noise variance `lam` (> 0).

    `counts` are pick multiplicities and `weights = counts / n`. `indices` are ordered by count
    (highest first), ties by the step at which the candidate was first picked. Diagnostics:
    `prior_variance` (= <q, q>), `posterior_variance` (after all n picks), `variances` (posterior
    variance after each pick, length n) and `picks` (the candidate picked at each step).
    """
    X, q = check_inputs(candidates, query, n)
    lam = float(lam)
    if not np.isfinite(lam) or lam <= 0:
        raise ValueError(f"lam (the SIFT noise variance) must be a finite number > 0, got {lam!r}")
    K, d = X.shape
    Z = np.empty((K + 1, d), dtype=np.float64)
    Z[:K] = X
    Z[K] = q

    # Conditioned kernel, only the parts the greedy rule needs:
    #   kqx[i] = k_S(q, x_i), kxx[i] = k_S(x_i, x_i), var_q = k_S(q, q).
    kqx = X @ q
    kxx = np.einsum("ij,ij->i", X, X)
    var_q = float(q @ q)
    prior = var_q

    U = np.empty((n, K + 1), dtype=np.float64)  # rows: Sigma_S[:, s] / sqrt(Sigma_S[s, s] + lam)
    picks = np.empty(n, dtype=np.int64)
    variances = np.empty(n, dtype=np.float64)
    for t in range(n):
        # Variance reduction of q from observing x_i: k(q, x_i)^2 / (k(x_i, x_i) + lam).
        s = int(np.argmax(kqx * kqx / (kxx + lam)))
        col = Z @ X[s]
        if t:
            col -= U[:t].T @ U[:t, s]
        u = col / np.sqrt(max(col[s], 0.0) + lam)
        U[t] = u
        uq = u[K]
        ux = u[:K]
        kxx -= ux * ux
        np.maximum(kxx, 0.0, out=kxx)  # guard against round-off
        kqx -= ux * uq
        var_q = max(var_q - uq * uq, 0.0)
        picks[t] = s
        variances[t] = var_q

    uniq, first, counts = np.unique(picks, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    counts = counts[order].astype(np.int64)
    return Selection(
        method="sift",
        indices=uniq[order].astype(np.int64),
        counts=counts,
        weights=counts / n,
        diagnostics={
            "lam": lam,
            "prior_variance": prior,
            "posterior_variance": float(var_q),
            "variances": variances,
            "picks": picks,
        },
    )
