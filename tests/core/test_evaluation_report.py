"""Aggregation of per-unit results: byte-weighted BPB, bootstrap intervals, tables, plots, atomic writes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hullft_agent.evaluation import (
    bootstrap_ci,
    byte_weighted_bpb,
    paired_delta_ci,
    summarize,
    summary_markdown,
)
from hullft_agent.evaluation.plots import plot_bpb_vs_n, plot_bpb_vs_time
from hullft_agent.files import write_atomic

LN2 = math.log(2)


def record(unit, method, n, nll, nbytes, group="g", passes=0, total=1.0):
    return {
        "unit": unit, "group": group, "method": method, "n": n, "nll_nats": nll, "n_bytes": nbytes,
        "n_tokens": nbytes // 3, "passes": passes, "steps": n, "support": min(n, 3), "pool_size": 10,
        "skipped": False, "times": {"embed": 0.01, "retrieve": 0.002, "select": 0.001, "finetune": total / 2,
                                    "score": 0.1, "total": total},
    }


RNG = np.random.default_rng(1)
NLL = RNG.uniform(50, 500, size=12).tolist()
BYTES = RNG.integers(80, 900, size=12).tolist()


def records():
    out = []
    for i, (nll, nb) in enumerate(zip(NLL, BYTES, strict=True)):
        group = "a" if i % 3 else "b"
        out.append(record(f"u{i:02d}", "base", 0, nll, nb, group, total=0.1))
        for n, factor in ((5, 0.97), (20, 0.93)):
            out.append(record(f"u{i:02d}", "hullft", n, nll * factor, nb, group, passes=n // 2 + 1, total=n / 4))
            out.append(record(f"u{i:02d}", "knn", n, nll * (factor + 0.01), nb, group, passes=n, total=n / 2))
    return out


def test_byte_weighted_bpb_is_total_nll_over_total_bytes_not_a_mean():
    assert byte_weighted_bpb(NLL, BYTES) == pytest.approx(sum(NLL) / (LN2 * sum(BYTES)))
    assert byte_weighted_bpb([10.0, 10.0], [10, 1000]) != pytest.approx(np.mean([10 / (LN2 * 10), 10 / (LN2 * 1000)]))
    with pytest.raises(ValueError):
        byte_weighted_bpb([1.0], [0])


def test_bootstrap_interval_contains_the_estimate_and_is_seeded():
    point = byte_weighted_bpb(NLL, BYTES)
    lo, hi = bootstrap_ci(NLL, BYTES, n_resamples=500, seed=3)
    assert lo < point < hi
    assert bootstrap_ci(NLL, BYTES, n_resamples=500, seed=3) == (lo, hi)
    assert bootstrap_ci(NLL, BYTES, n_resamples=500, seed=4) != (lo, hi)
    narrow = bootstrap_ci(NLL, BYTES, n_resamples=500, seed=3, confidence=0.5)
    assert lo <= narrow[0] <= narrow[1] <= hi
    assert bootstrap_ci([5.0], [10]) == pytest.approx((5 / (LN2 * 10),) * 2)
    dlo, dhi = paired_delta_ci([x * 0.9 for x in NLL], NLL, BYTES, seed=0)
    delta = byte_weighted_bpb([x * 0.9 for x in NLL], BYTES) - point
    assert dlo <= delta <= dhi < 0  # every unit improved, so the whole interval is below zero
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(NLL, BYTES, confidence=1.5)


def test_summary_table_matches_hand_computation_and_ignores_record_order():
    recs = records()
    summary = summarize(recs, methods=["base", "knn", "hullft"], ns=[5, 20], bootstrap=300, seed=0)
    assert summary == summarize(list(reversed(recs)), methods=["base", "knn", "hullft"], ns=[5, 20],
                                bootstrap=300, seed=0)
    rows = {(r["method"], r["n"]): r for r in summary["results"]}
    assert list(rows) == [("base", 0), ("knn", 5), ("knn", 20), ("hullft", 5), ("hullft", 20)]
    base = sum(NLL) / (LN2 * sum(BYTES))
    assert rows[("base", 0)]["bpb"] == pytest.approx(base)
    assert rows[("hullft", 20)]["bpb"] == pytest.approx(0.93 * base)
    assert rows[("hullft", 20)]["delta_vs_base"] == pytest.approx(-0.07 * base)
    assert rows[("hullft", 20)]["relative_change"] == pytest.approx(-0.07)
    assert rows[("hullft", 20)]["passes_mean"] == 11 and rows[("knn", 20)]["passes_mean"] == 20
    assert rows[("hullft", 20)]["time_mean_s"]["total"] == pytest.approx(5.0)
    for row in summary["results"]:
        assert row["ci"][0] <= row["bpb"] <= row["ci"][1]
    group_b = {(r["method"], r["n"]): r for r in summary["by_group"]["b"]}
    idx = [i for i in range(12) if i % 3 == 0]
    assert group_b[("base", 0)]["bpb"] == pytest.approx(sum(NLL[i] for i in idx) / (LN2 * sum(BYTES[i] for i in idx)))
    assert group_b[("base", 0)]["units"] == 4

    text = summary_markdown(summary, "Test")
    assert "| hullft | 20 | 12 |" in text and "| base | — | 12 |" in text and "(-7.0%)" in text
    assert "| b | 4 |" in text


def test_plots_are_png_files(tmp_path):
    summary = summarize(records(), methods=["base", "knn", "hullft"], ns=[5, 20], bootstrap=50)
    for plot, name in ((plot_bpb_vs_n, "n.png"), (plot_bpb_vs_time, "t.png")):
        path = plot(summary, tmp_path / name)
        assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 5000
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "summary.md"
    write_atomic(path, "old")

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("hullft_agent.files.os.replace", broken)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.md"]
