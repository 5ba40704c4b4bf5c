"""Frank-Wolfe over the probability simplex: the sparse convex combination of candidates nearest q.

Minimises f(w) = ||q - X^T w||^2 over w >= 0, sum(w) = 1, where X holds the K candidate rows:

* start at the vertex of the candidate with the largest <x_i, q>;
* each iteration: residual r = q - X^T w, linear oracle s = argmax_i <x_i, r>, direction
  d = x_s - X^T w, exact line search gamma = clip(<r, d> / ||d||^2, 0, 1),
  w <- (1 - gamma) w + gamma e_s.

Stops (`stop_reason`) when
* ``"tol"``: ||r|| < tol;
* ``"support_limit"``: the oracle picks a candidate outside the support while the support already
  holds n candidates (that step is not taken, so the support never exceeds n);
* ``"stationary"``: <r, d> <= 0, i.e. the Frank-Wolfe gap is zero and w is optimal;
* ``"degenerate"``: ||d||^2 is negligible (x_s coincides with the current point);
* ``"max_iter"``: `max_iter` steps were taken.

Efficiency: instead of a K x d matvec per iteration, the vector g = X r is updated in place,
g <- (1 - gamma) g + gamma X (q - x_s), where X (q - x_s) is computed once per distinct oracle pick
and cached (at most one Gram column per atom ever visited, never the full K x K Gram matrix). The
scalars <q, p>, <p, p> (p = X^T w) follow by closed-form updates, so an iteration costs O(K) plus
a handful of scalar operations. Weights and g share one lazy scale factor, so each step touches a
K-vector only once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hullft_agent.selection.types import check_inputs

_TINY = 1e-300


@dataclass(frozen=True)
class FWResult:
    """Outcome of `frank_wolfe`.

    `support` holds the candidate indices with positive weight, highest weight first (ties by
    index); `weights` are their weights (sum 1); `full_weights` is the length-K weight vector.
    `objective_history[t]` is f after t steps (length `iterations + 1`); `residual_norm` is
    ||q - X^T w|| recomputed exactly from the final weights.
    """

    support: np.ndarray
    weights: np.ndarray
    full_weights: np.ndarray
    residual_norm: float
    iterations: int
    objective_history: np.ndarray
    stop_reason: str

    @property
    def support_size(self) -> int:
        return int(len(self.support))


def check_fw_params(max_iter: int, tol: float) -> None:
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) or not (tol > 0):
        raise ValueError(f"tol must be a number > 0, got {tol!r}")


def frank_wolfe(
    candidates: np.ndarray, query: np.ndarray, n: int, max_iter: int = 250, tol: float = 1e-5
) -> FWResult:
    """Run Frank-Wolfe with a support cap of n (see the module docstring for the exact rules)."""
    X, q = check_inputs(candidates, query, n)
    check_fw_params(max_iter, tol)
    return _frank_wolfe(X, q, int(n), int(max_iter), float(tol))


def _frank_wolfe(X: np.ndarray, q: np.ndarray, n: int, max_iter: int, tol: float) -> FWResult:
    K = X.shape[0]
    b = X @ q  # <x_i, q>
    b_l = b.tolist()
    qq = float(q @ q)
    i0 = int(np.argmax(b))

    # Per visited atom s: the vector X (q - x_s) and ||x_s||^2.
    cols: dict[int, np.ndarray] = {}
    sqn: dict[int, float] = {}

    a0 = b - X @ X[i0]
    cols[i0] = a0
    sqn[i0] = b_l[i0] - float(a0[i0])

    # True state: g_true = alpha * g (g = X r) and w_true = alpha * w (one shared lazy scale), so a
    # step only does g += c * a_s on one K-vector.
    g = a0.copy()
    tmp = np.empty(K, dtype=np.float64)
    w = [0.0] * K
    w[i0] = 1.0
    alpha = 1.0
    in_support = [False] * K
    in_support[i0] = True
    n_support = 1

    qp = b_l[i0]  # <q, p>, p = X^T w
    pp = sqn[i0]  # <p, p>
    tol2 = tol * tol
    history = []
    stop_reason = "max_iter"
    iterations = 0
    multiply = np.multiply
    add = np.add
    for _ in range(max_iter):
        rr = qq - 2.0 * qp + pp
        history.append(rr)
        if rr < tol2:
            stop_reason = "tol"
            break
        s = int(g.argmax())
        if not in_support[s] and n_support >= n:
            stop_reason = "support_limit"
            break
        a = cols.get(s)
        if a is None:
            a = b - X @ X[s]
            cols[s] = a
            sqn[s] = b_l[s] - float(a[s])
        bs = b_l[s]
        gss = sqn[s]  # ||x_s||^2
        gs = alpha * float(g[s])  # <r, x_s>
        hs = bs - gs  # <p, x_s>
        rd = gs - qp + pp  # <r, d> = <r, x_s> - <r, p>
        if rd <= 0.0:
            stop_reason = "stationary"
            break
        dd = gss - 2.0 * hs + pp  # ||d||^2
        if dd <= 1e-14 * (gss + pp) + _TINY:
            stop_reason = "degenerate"
            break
        gamma = rd / dd
        iterations += 1
        if gamma >= 1.0:
            # Jump to the vertex x_s: everything else drops out of the support.
            g[:] = a
            w = [0.0] * K
            w[s] = 1.0
            alpha = 1.0
            in_support = [False] * K
            in_support[s] = True
            n_support = 1
            qp = bs
            pp = gss
            continue
        one_m = 1.0 - gamma
        pp = one_m * one_m * pp + 2.0 * gamma * one_m * hs + gamma * gamma * gss
        qp = one_m * qp + gamma * bs
        alpha *= one_m
        c = gamma / alpha
        multiply(a, c, tmp)
        add(g, tmp, g)
        w[s] += c
        if not in_support[s]:
            in_support[s] = True
            n_support += 1
        if alpha < 1e-100:  # fold the lazy scale in before it underflows
            g *= alpha
            w = [v * alpha for v in w]
            alpha = 1.0
    else:
        history.append(qq - 2.0 * qp + pp)

    w_true = np.asarray(w, dtype=np.float64) * alpha
    w_true[~np.asarray(in_support, dtype=bool)] = 0.0
    w_true /= w_true.sum()
    support = np.flatnonzero(w_true > 0.0)
    support = support[np.argsort(-w_true[support], kind="stable")].astype(np.int64)
    residual = q - w_true[support] @ X[support]
    return FWResult(
        support=support,
        weights=w_true[support],
        full_weights=w_true,
        residual_norm=float(np.sqrt(residual @ residual)),
        iterations=iterations,
        objective_history=np.maximum(np.asarray(history, dtype=np.float64), 0.0),
        stop_reason=stop_reason,
    )
