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
K-vector only once. The cached columns also give the support's Gram matrix for free
(`FWResult.support_gram`), which `select("hullft")` hands to the integerization.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hullft_agent.selection.types import check_inputs


@dataclass(frozen=True)
class FWResult:
    """Outcome of `frank_wolfe`.

    `support` holds the candidate indices with positive weight, highest weight first (ties by
    index); `weights` are their weights (sum 1); `full_weights` is the length-K weight vector.
    `objective_history[t]` is f after t steps (length `iterations + 1`); `residual_norm` is
    ||q - X^T w|| recomputed exactly from the final weights. `support_gram` is the Gram matrix
    <x_i, x_j> of the support rows (in `support` order) and `support_similarities` their <x_i, q>.
    """

    support: np.ndarray
    weights: np.ndarray
    full_weights: np.ndarray
    residual_norm: float
    iterations: int
    objective_history: np.ndarray
    stop_reason: str
    support_gram: np.ndarray = field(repr=False, compare=False)
    support_similarities: np.ndarray = field(repr=False, compare=False)

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
    i0 = int(b.argmax())

    # Per visited atom s, in visit order: row slot[s] of A holds X (q - x_s); atom[s] caches that row
    # with <x_s, q> and ||x_s||^2.
    A = np.empty((min(K, max_iter + 1), K), dtype=np.float64)
    a = A[0]
    np.subtract(b, X @ X[i0], out=a)
    slot = {i0: 0}
    atom = {i0: (a, b_l[i0], b_l[i0] - float(a[i0]))}

    # True state: g_true = alpha * g (g = X r) and w_true = alpha * w (one shared lazy scale), so a
    # step only does g += c * a_s on one K-vector.
    g = a.copy()
    tmp = np.empty(K, dtype=np.float64)
    w = [0.0] * K
    w[i0] = 1.0
    alpha = 1.0
    in_support = [False] * K
    in_support[i0] = True
    n_support = 1

    qp = b_l[i0]  # <q, p>, p = X^T w
    pp = atom[i0][2]  # <p, p>
    rr = qq - 2.0 * qp + pp  # ||r||^2
    tol2 = tol * tol
    history = [rr]
    append = history.append
    argmax = g.argmax
    item = g.item
    multiply = np.multiply
    add = np.add
    get = atom.get
    stop_reason = "max_iter"
    for _ in range(max_iter):
        if rr < tol2:
            stop_reason = "tol"
            break
        s = int(argmax())
        if not in_support[s] and n_support >= n:
            stop_reason = "support_limit"
            break
        entry = get(s)
        if entry is None:
            a = A[len(slot)]
            np.subtract(b, X @ X[s], out=a)
            slot[s] = len(slot)
            entry = atom[s] = (a, b_l[s], b_l[s] - float(a[s]))
        a, bs, gss = entry  # X (q - x_s), <x_s, q>, ||x_s||^2
        gs = alpha * item(s)  # <r, x_s>
        rd = gs - qp + pp  # <r, d> = <r, x_s> - <r, p>
        if rd <= 0.0:
            stop_reason = "stationary"
            break
        hs = bs - gs  # <p, x_s>
        dd = gss - 2.0 * hs + pp  # ||d||^2
        if dd <= 1e-14 * (gss + pp):
            stop_reason = "degenerate"
            break
        gamma = rd / dd
        if gamma < 1.0:
            one_m = 1.0 - gamma
            pp = one_m * one_m * pp + gamma * (2.0 * one_m * hs + gamma * gss)
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
        rr = qq - 2.0 * qp + pp
        append(rr)

    w_true = np.asarray(w, dtype=np.float64)  # atoms dropped by a full step were reset to 0
    w_true /= w_true.sum()
    support = np.flatnonzero(w_true)
    support = support[np.argsort(-w_true[support], kind="stable")]
    weights = w_true[support]
    # Gram matrix of the support from the cached columns: <x_s, x_i> = b_i - (X (q - x_s))_i.
    b_s = b[support]
    gram = b_s - A[[slot[i] for i in support.tolist()]][:, support]
    gram += gram.T
    gram *= 0.5
    residual = q - weights @ X[support]
    return FWResult(
        support=support.astype(np.int64),
        weights=weights,
        full_weights=w_true,
        residual_norm=float(np.sqrt(residual @ residual)),
        iterations=len(history) - 1,
        objective_history=np.maximum(np.array(history), 0.0),
        stop_reason=stop_reason,
        support_gram=gram,
        support_similarities=b_s,
    )
