"""Selectors: Frank-Wolfe, integerization, SIFT, kNN and the `select` entry point."""

from __future__ import annotations

import numpy as np
import pytest

from hullft_agent.config import SelectionConfig
from hullft_agent.selection import (
    FWResult,
    Selection,
    frank_wolfe,
    integerize,
    knn,
    select,
    sift,
)


def unit_rows(rng: np.random.Generator, k: int, d: int) -> np.ndarray:
    X = rng.standard_normal((k, d))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def clustered(rng: np.random.Generator, k: int, d: int, clusters: int = 5, spread: float = 0.1) -> np.ndarray:
    centres = unit_rows(rng, clusters, d)
    X = centres[rng.integers(0, clusters, k)] + spread * rng.standard_normal((k, d))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def loss(X: np.ndarray, q: np.ndarray, idx: np.ndarray, counts: np.ndarray, n: int) -> float:
    r = q - (counts @ X[idx]) / n
    return float(r @ r)


def largest_remainder(w: np.ndarray, n: int) -> np.ndarray:
    nw = n * w / w.sum()
    c = np.floor(nw).astype(np.int64)
    c[np.argsort(-(nw - c), kind="stable")[: n - c.sum()]] += 1
    return c


# --------------------------------------------------------------------------------------- Frank-Wolfe


@pytest.mark.parametrize("seed", range(8))
def test_fw_weights_on_simplex_and_support_capped(seed):
    rng = np.random.default_rng(seed)
    X = clustered(rng, 120, 32)
    q = clustered(rng, 1, 32)[0]
    n = int(rng.integers(1, 30))
    r = frank_wolfe(X, q, n)
    assert isinstance(r, FWResult)
    assert (r.full_weights >= 0).all() and abs(r.full_weights.sum() - 1) < 1e-12
    assert (r.weights > 0).all() and abs(r.weights.sum() - 1) < 1e-12
    assert r.support.dtype == np.int64 and 1 <= r.support_size <= n
    assert np.array_equal(np.sort(r.support), np.flatnonzero(r.full_weights))
    assert (np.diff(r.weights) <= 0).all(), "support must be ordered by weight, highest first"
    assert np.allclose(r.full_weights[r.support], r.weights)
    # The reported residual is that of the returned weights.
    assert r.residual_norm == pytest.approx(np.linalg.norm(q - r.full_weights @ X), abs=1e-12)
    assert r.stop_reason in {"tol", "support_limit", "stationary", "degenerate", "max_iter"}


@pytest.mark.parametrize("seed", range(8))
def test_fw_objective_non_increasing(seed):
    rng = np.random.default_rng(100 + seed)
    X = clustered(rng, 150, 48, spread=0.2)
    q = clustered(rng, 1, 48, spread=0.2)[0]
    r = frank_wolfe(X, q, 40, max_iter=200)
    h = r.objective_history
    assert len(h) == r.iterations + 1
    assert r.iterations > 5
    assert (np.diff(h) <= 1e-12).all()
    assert h[-1] == pytest.approx(r.residual_norm**2, abs=1e-10)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n", [3, 8])
def test_fw_recovers_planted_sparse_combination(seed, n):
    rng = np.random.default_rng(seed)
    X = unit_rows(rng, 50, 64)
    planted = rng.choice(50, size=3, replace=False)
    w = rng.dirichlet(np.full(3, 2.0))
    q = w @ X[planted]
    r = frank_wolfe(X, q, n)
    assert r.stop_reason == "tol"
    assert r.residual_norm < 1e-5
    assert set(r.support.tolist()) == set(planted.tolist())
    assert np.allclose(r.full_weights[planted], w, atol=1e-4)


def reference_frank_wolfe(X: np.ndarray, q: np.ndarray, n: int, max_iter: int, tol: float):
    """Textbook transcription of the FW rules: full residual and matvec every iteration."""
    w = np.zeros(len(X))
    w[np.argmax(X @ q)] = 1.0
    history = []
    for _ in range(max_iter):
        r = q - w @ X
        history.append(r @ r)
        if np.sqrt(r @ r) < tol:
            return w, history
        s = int(np.argmax(X @ r))
        if w[s] == 0 and np.count_nonzero(w) >= n:
            return w, history
        d = X[s] - w @ X
        if d @ d < 1e-14 or r @ d <= 0:
            return w, history
        gamma = min(max((r @ d) / (d @ d), 0.0), 1.0)
        w = (1 - gamma) * w
        w[s] += gamma
    r = q - w @ X
    history.append(r @ r)
    return w, history


@pytest.mark.parametrize("seed", range(6))
def test_fw_matches_textbook_iteration(seed):
    rng = np.random.default_rng(200 + seed)
    X = clustered(rng, 90, 20, spread=0.3)
    q = clustered(rng, 1, 20, spread=0.3)[0] * rng.uniform(0.5, 1.0)
    n, max_iter = int(rng.integers(3, 40)), int(rng.integers(1, 120))
    r = frank_wolfe(X, q, n, max_iter=max_iter)
    w, history = reference_frank_wolfe(X, q, n, max_iter, 1e-5)
    assert np.allclose(r.full_weights, w, atol=1e-9)
    assert np.allclose(r.objective_history, history, atol=1e-10)


def test_fw_starts_at_most_similar_vertex():
    rng = np.random.default_rng(7)
    X = clustered(rng, 80, 16)
    q = clustered(rng, 1, 16)[0]
    i0 = int(np.argmax(X @ q))
    r = frank_wolfe(X, q, 10)
    assert r.objective_history[0] == pytest.approx(np.sum((q - X[i0]) ** 2), abs=1e-12)
    # With n = 1 no second atom may enter, so FW must stay on the start vertex.
    r1 = frank_wolfe(X, q, 1)
    assert r1.support.tolist() == [i0]
    assert r1.iterations == 0
    assert r1.stop_reason in {"support_limit", "stationary"}


def test_fw_support_limit_is_respected():
    rng = np.random.default_rng(3)
    X = unit_rows(rng, 200, 64)
    q = unit_rows(rng, 1, 64)[0]
    for n in (1, 2, 5, 13):
        r = frank_wolfe(X, q, n, max_iter=1000)
        assert r.support_size <= n
        assert r.stop_reason == "support_limit"


def test_fw_max_iter():
    rng = np.random.default_rng(4)
    X = clustered(rng, 100, 32, spread=0.3)
    q = clustered(rng, 1, 32, spread=0.3)[0]
    r = frank_wolfe(X, q, 100, max_iter=3)
    assert r.iterations == 3 and r.stop_reason == "max_iter"


# ----------------------------------------------------------------------------------- integerization


def test_integerize_valid_and_never_worse_than_largest_remainder():
    rng = np.random.default_rng(11)
    strictly_better = 0
    for _ in range(300):
        K, d = int(rng.integers(5, 40)), int(rng.integers(2, 20))
        X = clustered(rng, K, d, clusters=3, spread=0.5)
        q = rng.standard_normal(d) * 0.5
        m = int(rng.integers(1, K + 1))
        support = rng.choice(K, size=m, replace=False)
        w = rng.dirichlet(np.full(m, 0.5))
        n = int(rng.integers(1, 60))
        passes = int(rng.integers(0, 4))
        c = integerize(X, q, support, w, n, passes=passes)
        assert c.shape == (m,) and np.issubdtype(c.dtype, np.integer)
        assert (c >= 0).all() and int(c.sum()) == n
        ours, ref = loss(X, q, support, c, n), loss(X, q, support, largest_remainder(w, n), n)
        assert ours <= ref + 1e-12
        strictly_better += ours < ref - 1e-9
    assert strictly_better > 30, "integerization should often beat plain rounding"


def test_integerize_without_moves_still_never_worse_than_largest_remainder():
    # In low dimension a greedy fill from the floor is sometimes worse than plain rounding; the
    # result must still not be (passes=0 leaves no move refinement to rescue it).
    rng = np.random.default_rng(14)
    for _ in range(400):
        m, d, n = int(rng.integers(2, 8)), int(rng.integers(1, 3)), int(rng.integers(2, 15))
        X = rng.standard_normal((m, d))
        q = rng.standard_normal(d)
        w = rng.dirichlet(np.full(m, 0.5))
        support = np.arange(m)
        c = integerize(X, q, support, w, n, passes=0)
        assert int(c.sum()) == n and (c >= 0).all()
        assert loss(X, q, support, c, n) <= loss(X, q, support, largest_remainder(w, n), n) + 1e-12


def test_integerize_greedy_fill_matches_reference():
    # passes=0: the result is the greedy fill from floor(n w) (each unit where the full loss drops
    # most), or largest-remainder rounding when that is strictly better.
    rng = np.random.default_rng(15)
    for _ in range(100):
        m, d, n = int(rng.integers(2, 10)), int(rng.integers(2, 12)), int(rng.integers(2, 40))
        X = rng.standard_normal((m, d))
        q = rng.standard_normal(d)
        w = rng.dirichlet(np.ones(m))
        support = np.arange(m)
        fill = np.floor(n * w).astype(np.int64)
        for _ in range(n - int(fill.sum())):
            trials = [loss(X, q, support, fill + np.eye(m, dtype=np.int64)[i], n) for i in range(m)]
            fill[int(np.argmin(trials))] += 1
        lr = largest_remainder(w, n)
        expected = lr if loss(X, q, support, lr, n) < loss(X, q, support, fill, n) else fill
        assert integerize(X, q, support, w, n, passes=0).tolist() == expected.tolist()


def test_integerize_reaches_single_move_local_optimum():
    rng = np.random.default_rng(12)
    for _ in range(40):
        K, d, n = 12, 6, 17
        X = unit_rows(rng, K, d)
        q = rng.standard_normal(d) * 0.3
        support = np.arange(K)
        w = rng.dirichlet(np.ones(K))
        c = integerize(X, q, support, w, n, passes=100)
        base = loss(X, q, support, c, n)
        for i in np.flatnonzero(c):
            for j in range(K):
                if i != j:
                    c2 = c.copy()
                    c2[i] -= 1
                    c2[j] += 1
                    assert loss(X, q, support, c2, n) >= base - 1e-12


def test_integerize_exact_weights_kept():
    rng = np.random.default_rng(13)
    X = unit_rows(rng, 30, 10)
    support = np.array([4, 9, 17])
    counts = np.array([5, 3, 2])
    q = counts @ X[support] / 10  # the integer point is the exact optimum (L = 0)
    c = integerize(X, q, support, counts / 10, 10)
    assert c.tolist() == counts.tolist()


def test_integerize_rejects_bad_support():
    X = np.eye(4)
    q = np.ones(4) / 4
    with pytest.raises(ValueError):
        integerize(X, q, np.array([0, 0]), np.array([0.5, 0.5]), 3)
    with pytest.raises(ValueError):
        integerize(X, q, np.array([0, 7]), np.array([0.5, 0.5]), 3)
    with pytest.raises(ValueError):
        integerize(X, q, np.array([0, 1]), np.array([0.5]), 3)
    with pytest.raises(ValueError):
        integerize(X, q, np.array([0, 1]), np.array([-0.5, 1.5]), 3)
    with pytest.raises(ValueError):
        integerize(X, q, np.array([0, 1]), np.array([0.5, 0.5]), 3, passes=-1)


# --------------------------------------------------------------------------------------------- SIFT


def brute_force_sift(X: np.ndarray, q: np.ndarray, n: int, lam: float) -> tuple[list[int], list[float]]:
    """Greedy SIFT by explicit posterior-variance formulas, one matrix inverse per trial."""
    picks: list[int] = []
    variances: list[float] = []
    for _ in range(n):
        best, best_var = -1, np.inf
        for i in range(len(X)):
            S = X[picks + [i]]
            k_sq = S @ q
            var = q @ q - k_sq @ np.linalg.inv(S @ S.T + lam * np.eye(len(S))) @ k_sq
            if var < best_var - 1e-12:
                best, best_var = i, var
        picks.append(best)
        variances.append(float(best_var))
    return picks, variances


@pytest.mark.parametrize(
    ("seed", "K", "d", "n", "lam"),
    [(0, 8, 5, 6, 0.2), (1, 10, 4, 9, 0.05), (2, 4, 6, 10, 0.2), (3, 6, 3, 8, 1.0), (4, 12, 16, 7, 0.01)],
)
def test_sift_matches_brute_force(seed, K, d, n, lam):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((K, d))
    q = rng.standard_normal(d)
    picks, variances = brute_force_sift(X, q, n, lam)
    sel = sift(X, q, n, lam=lam)
    assert sel.diagnostics["picks"].tolist() == picks
    assert np.allclose(sel.diagnostics["variances"], variances, rtol=1e-8, atol=1e-10)
    assert sel.diagnostics["posterior_variance"] == pytest.approx(variances[-1], rel=1e-8, abs=1e-10)
    assert sel.diagnostics["prior_variance"] == pytest.approx(q @ q)
    uniq, cnt = np.unique(picks, return_counts=True)
    assert dict(zip(sel.indices.tolist(), sel.counts.tolist(), strict=True)) == dict(
        zip(uniq.tolist(), cnt.tolist(), strict=True)
    )
    assert int(sel.counts.sum()) == n
    assert np.allclose(sel.weights, sel.counts / n)


def test_sift_repeats_picks_when_pool_is_small():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((3, 8))
    q = rng.standard_normal(8)
    sel = sift(X, q, 10, lam=0.1)
    assert int(sel.counts.sum()) == 10 and sel.counts.max() > 1
    assert (np.diff(sel.counts) <= 0).all()
    assert (np.diff(sel.diagnostics["variances"]) <= 1e-12).all()


# ---------------------------------------------------------------------------------------------- kNN


def test_knn_picks_top_n_by_inner_product():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((50, 12))
    q = rng.standard_normal(12)
    sel = knn(X, q, 7)
    expected = np.argsort(-(X @ q))[:7]
    assert sel.indices.tolist() == expected.tolist()
    assert sel.counts.tolist() == [1] * 7
    assert np.allclose(sel.weights, 1 / 7)


def test_knn_with_fewer_candidates_than_n_deals_round_robin():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((3, 5))
    q = rng.standard_normal(5)
    sel = knn(X, q, 8)
    assert sel.indices.tolist() == np.argsort(-(X @ q)).tolist()
    assert sel.counts.tolist() == [3, 3, 2]
    assert np.allclose(sel.weights, sel.counts / 8)


# ------------------------------------------------------------------------------------------- select


@pytest.mark.parametrize("method", ["hullft", "knn", "sift"])
@pytest.mark.parametrize("n", [1, 5, 20, 250])
def test_select_counts_sum_to_n(method, n):
    rng = np.random.default_rng(n)
    X = clustered(rng, 200, 32)
    q = clustered(rng, 1, 32)[0]
    sel = select(method, X, q, n)
    assert isinstance(sel, Selection) and sel.method == method
    assert sel.n == n and int(sel.counts.sum()) == n
    assert (sel.counts > 0).all()
    assert len(np.unique(sel.indices)) == len(sel.indices)
    assert sel.indices.min() >= 0 and sel.indices.max() < 200
    assert len(sel.weights) == len(sel.indices)
    assert (np.diff(sel.weights) <= 1e-15).all(), "indices must be ordered highest weight first"


def test_select_hullft_diagnostics_and_weights():
    rng = np.random.default_rng(21)
    X = clustered(rng, 150, 24, spread=0.3)
    q = clustered(rng, 1, 24, spread=0.3)[0]
    sel = select("hullft", X, q, 20, max_iter=100, tol=1e-6, passes=1)
    fw = frank_wolfe(X, q, 20, max_iter=100, tol=1e-6)
    d = sel.diagnostics
    for key in ("residual_norm", "integer_residual_norm", "iterations", "stop_reason", "support_size"):
        assert key in d
    assert d["residual_norm"] == pytest.approx(fw.residual_norm)
    assert d["support_size"] == fw.support_size and d["iterations"] == fw.iterations
    assert set(sel.indices.tolist()) <= set(fw.support.tolist())
    assert np.allclose(sel.weights, fw.full_weights[sel.indices])
    assert d["integer_residual_norm"] == pytest.approx(np.sqrt(loss(X, q, sel.indices, sel.counts, 20)))


def test_a_selection_config_selects_with_its_method_and_parameters():
    rng = np.random.default_rng(22)
    X = clustered(rng, 60, 16)
    q = clustered(rng, 1, 16)[0]
    for method in ("hullft", "knn", "sift"):
        sel = SelectionConfig(method=method, n=9).select(X, q)
        assert sel.method == method and sel.n == 9
    sel = SelectionConfig(method="sift", n=9, sift_lambda=0.05).select(X, q)
    assert sel.diagnostics["lam"] == 0.05
    with pytest.raises(ValueError, match="none"):
        SelectionConfig(method="none").select(X, q)


def _good():
    rng = np.random.default_rng(0)
    return unit_rows(rng, 10, 4), unit_rows(rng, 1, 4)[0]


def _nan_candidates():
    X, q = _good()
    X[3, 1] = np.nan
    return X, q


def _inf_query():
    X, q = _good()
    q[2] = np.inf
    return X, q


@pytest.mark.parametrize("method", ["hullft", "knn", "sift"])
@pytest.mark.parametrize(
    ("make", "n", "match"),
    [
        (_good, 0, "n must be"),
        (_good, -1, "n must be"),
        (_good, 2.5, "n must be"),
        (_good, True, "n must be"),
        (_nan_candidates, 3, "NaN or inf"),
        (_inf_query, 3, "NaN or inf"),
        (lambda: (_good()[0], np.ones(5)), 3, "dimension 4"),
        (lambda: (_good()[0], np.ones((1, 4))), 3, "query"),
        (lambda: (np.zeros((0, 4)), np.ones(4)), 3, "non-empty"),
        (lambda: (np.ones(4), np.ones(4)), 3, "non-empty"),
    ],
)
def test_select_rejects_bad_inputs(method, make, n, match):
    X, q = make()
    with pytest.raises(ValueError, match=match):
        select(method, X, q, n)


def test_select_rejects_unknown_method_and_params():
    X, q = _good()
    with pytest.raises(ValueError, match="'hull'.*hullft, knn, sift"):
        select("hull", X, q, 3)
    with pytest.raises(ValueError, match="none"):
        select("none", X, q, 3)
    with pytest.raises(TypeError, match="lam"):
        select("hullft", X, q, 3, lam=0.1)
    with pytest.raises(TypeError, match="passes"):
        select("sift", X, q, 3, passes=2)
    with pytest.raises(TypeError, match="max_iter"):
        select("knn", X, q, 3, max_iter=2)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("sift", {"lam": 0.0}),
        ("sift", {"lam": -1.0}),
        ("sift", {"lam": float("nan")}),
        ("hullft", {"max_iter": 0}),
        ("hullft", {"max_iter": 2.5}),
        ("hullft", {"tol": 0.0}),
        ("hullft", {"tol": -1e-3}),
        ("hullft", {"passes": -1}),
    ],
)
def test_select_rejects_bad_param_values(method, params):
    X, q = _good()
    with pytest.raises(ValueError, match=next(iter(params))):
        select(method, X, q, 3, **params)


def test_selectors_accept_float32_and_lists():
    rng = np.random.default_rng(9)
    X = clustered(rng, 40, 8).astype(np.float32)
    q = X[5].tolist()
    for method in ("hullft", "knn", "sift"):
        assert select(method, X, q, 4).n == 4
    # A query equal to a candidate: hullft puts all mass on it.
    sel = select("hullft", X, q, 4)
    assert sel.indices.tolist() == [5] and sel.counts.tolist() == [4]
