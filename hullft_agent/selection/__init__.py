"""Support-set selection: which memory rows to finetune on, and how many times each.

`select(method, candidates, query, n, **params)` is the one entry point:

* ``"hullft"``: Frank-Wolfe over the simplex (`frank_wolfe`, params `max_iter`, `tol`) finds a
  sparse convex combination of candidates close to the query; `integerize` (param `passes`) turns
  its weights into integer counts summing to n.
* ``"knn"``: the n candidates most similar to the query (no params).
* ``"sift"``: greedy posterior-variance reduction (`sift`, param `lam`).

``"none"`` (no finetuning) is handled by the adapter, not here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hullft_agent.selection.frank_wolfe import FWResult, _frank_wolfe, check_fw_params, frank_wolfe
from hullft_agent.selection.integerize import _integerize, check_passes, integerize
from hullft_agent.selection.knn import knn
from hullft_agent.selection.sift import sift
from hullft_agent.selection.types import Selection, check_inputs

__all__ = [
    "FWResult",
    "Selection",
    "frank_wolfe",
    "integerize",
    "knn",
    "select",
    "sift",
]

#: Accepted keyword parameters of each method.
METHOD_PARAMS: dict[str, tuple[str, ...]] = {
    "hullft": ("max_iter", "tol", "passes"),
    "knn": (),
    "sift": ("lam",),
}


def _hullft(
    candidates: np.ndarray,
    query: np.ndarray,
    n: int,
    max_iter: int = 250,
    tol: float = 1e-5,
    passes: int = 2,
) -> Selection:
    X, q = check_inputs(candidates, query, n)
    check_fw_params(max_iter, tol)
    check_passes(passes)
    n = int(n)
    fw = _frank_wolfe(X, q, n, int(max_iter), float(tol))
    counts = _integerize(fw.support_gram, fw.support_similarities, fw.weights, n, int(passes))
    residual = q - (counts @ X[fw.support]) / n
    keep = counts > 0
    # fw.support is already ordered by FW weight (highest first); stable filtering keeps that order.
    return Selection(
        method="hullft",
        indices=fw.support[keep],
        counts=counts[keep].astype(np.int64),
        weights=fw.weights[keep],
        diagnostics={
            "residual_norm": fw.residual_norm,
            "integer_residual_norm": float(np.sqrt(residual @ residual)),
            "iterations": fw.iterations,
            "stop_reason": fw.stop_reason,
            "support_size": fw.support_size,
            "objective_history": fw.objective_history,
        },
    )


def select(method: str, candidates: np.ndarray, query: np.ndarray, n: int, **params: Any) -> Selection:
    """Select an n-unit finetuning multiset from `candidates` (K x d) for `query` (d,).

    Returns a `Selection` whose counts sum to exactly n. Raises ValueError for an unknown method or
    invalid inputs/values, TypeError for a parameter the method does not accept.

    For ``"hullft"`` the `weights` are the Frank-Wolfe weights of the kept indices (support entries
    that received zero counts are dropped, so they may sum to slightly less than 1); diagnostics
    hold `residual_norm` (FW), `integer_residual_norm` (of the integer counts), `iterations`,
    `stop_reason`, `support_size` (FW support) and `objective_history`.
    """
    if method == "none":
        raise ValueError(
            "method 'none' selects nothing (no finetuning); the adapter handles it, not select()"
        )
    if method not in METHOD_PARAMS:
        raise ValueError(f"unknown selection method {method!r}; valid methods: {', '.join(METHOD_PARAMS)}")
    allowed = METHOD_PARAMS[method]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) if allowed else "none"
        raise TypeError(f"select({method!r}) got unexpected parameter(s) {unknown}; accepted: {valid}")
    if method == "hullft":
        return _hullft(candidates, query, n, **params)
    if method == "knn":
        return knn(candidates, query, n)
    return sift(candidates, query, n, **params)
