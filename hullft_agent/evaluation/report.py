"""Aggregating per-unit results: byte-weighted BPB, bootstrap confidence intervals, tables.

BPB of a set of units = Σ nll_nats / (ln 2 · Σ bytes): byte weighted, never a mean of per-unit BPB.
The confidence interval resamples units with replacement (percentile bootstrap, seeded), so it says
how much the figure depends on which units happened to be held out. The change against `base` is a
paired bootstrap: the same resampled units for both.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from hullft_agent.errors import InvalidArgumentError

_LN2 = math.log(2.0)
BASE = "base"
TIME_KEYS = ("embed", "retrieve", "select", "finetune", "score", "total")


def byte_weighted_bpb(nll_nats: Sequence[float], n_bytes: Sequence[int]) -> float:
    """Σ nll / (ln 2 · Σ bytes)."""
    total_bytes = int(sum(n_bytes))
    if total_bytes <= 0:
        raise InvalidArgumentError("no bytes to score: byte-weighted BPB needs at least one byte")
    return math.fsum(nll_nats) / (_LN2 * total_bytes)


def _resample_index(n_units: int, n_resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_units, size=(n_resamples, n_units))


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(samples, [tail, 1.0 - tail])
    return float(lo), float(hi)


def _bpb_interval(nll_nats: np.ndarray, n_bytes: Sequence[int], n_resamples: int, confidence: float,
                  seed: int, what: str) -> tuple[float, float]:
    """Percentile interval of Σ nll / (ln 2 · Σ bytes) over units resampled with replacement."""
    _check_bootstrap(n_resamples, confidence)
    if nll_nats.size == 0:
        raise InvalidArgumentError(f"{what} needs at least one unit")
    nb = np.asarray(n_bytes, dtype=np.float64)
    idx = _resample_index(nll_nats.size, n_resamples, seed)
    return _interval(nll_nats[idx].sum(axis=1) / (_LN2 * nb[idx].sum(axis=1)), confidence)


def bootstrap_ci(
    nll_nats: Sequence[float],
    n_bytes: Sequence[int],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the byte-weighted BPB, resampling units with replacement."""
    return _bpb_interval(np.asarray(nll_nats, dtype=np.float64), n_bytes, n_resamples, confidence, seed,
                         "bootstrap_ci")


def paired_delta_ci(
    nll_a: Sequence[float],
    nll_b: Sequence[float],
    n_bytes: Sequence[int],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Interval of BPB(a) − BPB(b) over the same units (same bytes), resampled together."""
    delta = np.asarray(nll_a, dtype=np.float64) - np.asarray(nll_b, dtype=np.float64)
    return _bpb_interval(delta, n_bytes, n_resamples, confidence, seed, "paired_delta_ci")


def bootstrap_mean_ci(
    values: Sequence[float],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean (e.g. of paired per-game differences), resampling values."""
    _check_bootstrap(n_resamples, confidence)
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise InvalidArgumentError("bootstrap_mean_ci needs at least one value")
    return _interval(x[_resample_index(x.size, n_resamples, seed)].mean(axis=1), confidence)


def _check_bootstrap(n_resamples: int, confidence: float) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise InvalidArgumentError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise InvalidArgumentError(f"confidence must be in (0, 1), got {confidence!r}")


# ---------------------------------------------------------------------------------------- summary


def _order(values: Iterable[Any], preferred: Sequence[Any]) -> list[Any]:
    values = list(dict.fromkeys(values))
    rank = {v: i for i, v in enumerate(preferred)}
    return sorted(values, key=lambda v: (rank.get(v, len(rank)), str(v)))


def _cell(records: list[dict[str, Any]], base: dict[str, dict[str, Any]] | None, *, bootstrap: int,
          confidence: float, seed: int) -> dict[str, Any]:
    records = sorted(records, key=lambda r: r["unit"])
    nll = [r["nll_nats"] for r in records]
    nbytes = [r["n_bytes"] for r in records]
    bpb = byte_weighted_bpb(nll, nbytes)
    lo, hi = bootstrap_ci(nll, nbytes, n_resamples=bootstrap, confidence=confidence, seed=seed)
    times = {key: float(np.mean([r["times"].get(key, 0.0) for r in records])) for key in TIME_KEYS}
    cell: dict[str, Any] = {
        "units": len(records),
        "n_bytes": int(sum(nbytes)),
        "n_tokens": int(sum(r["n_tokens"] for r in records)),
        "bpb": bpb,
        "ci": [lo, hi],
        "delta_vs_base": None,
        "delta_ci": None,
        "relative_change": None,
        "passes_mean": float(np.mean([r["passes"] for r in records])),
        "steps_mean": float(np.mean([r["steps"] for r in records])),
        "support_mean": float(np.mean([r["support"] for r in records])),
        "pool_mean": float(np.mean([r["pool_size"] for r in records])),
        "skipped": int(sum(bool(r["skipped"]) for r in records)),
        "time_mean_s": times,
        "time_median_s": {"total": float(np.median([r["times"].get("total", 0.0) for r in records]))},
    }
    if base is not None:
        paired = [(r, base[r["unit"]]) for r in records if r["unit"] in base]
        if paired:
            a = [r["nll_nats"] for r, _ in paired]
            b = [s["nll_nats"] for _, s in paired]
            nb = [r["n_bytes"] for r, _ in paired]
            base_bpb = byte_weighted_bpb(b, nb)
            delta = byte_weighted_bpb(a, nb) - base_bpb
            cell["delta_vs_base"] = delta
            cell["relative_change"] = delta / base_bpb if base_bpb else None
            cell["delta_ci"] = list(
                paired_delta_ci(a, b, nb, n_resamples=bootstrap, confidence=confidence, seed=seed)
            )
    return cell


def summarize(
    records: Iterable[dict[str, Any]],
    *,
    methods: Sequence[str] = (),
    ns: Sequence[int] = (),
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Per (method, N) and per (group, method, N): byte-weighted BPB, bootstrap CI, paired change vs
    base, mean passes and mean per-unit stage times. Records are the runner's JSONL result lines; the
    outcome does not depend on their order. `base` has N = 0 (no adaptation, the same for every N)."""
    _check_bootstrap(bootstrap, confidence)
    cells: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    groups: dict[str, dict[tuple[str, int], list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        key = (r["method"], int(r["n"]))
        cells[key].append(r)
        groups[r["group"]][key].append(r)
    method_order = _order((m for m, _ in cells), list(methods))
    n_order = _order((n for _, n in cells), [0, *ns])

    def table(source: dict[tuple[str, int], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        base_records = source.get((BASE, 0))
        base_by_unit = {r["unit"]: r for r in base_records} if base_records else None
        rows = []
        for m in method_order:
            for n in n_order:
                if (m, n) not in source:
                    continue
                use_base = None if m == BASE else base_by_unit
                cell = _cell(source[(m, n)], use_base, bootstrap=bootstrap, confidence=confidence, seed=seed)
                rows.append({"method": m, "n": n, **cell})
        return rows

    units = {r["unit"] for rs in cells.values() for r in rs}
    return {
        "units": len(units),
        "confidence": confidence,
        "bootstrap": bootstrap,
        "seed": seed,
        "results": table(cells),
        "by_group": {g: table(groups[g]) for g in sorted(groups)},
    }


# ---------------------------------------------------------------------------------------- markdown


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "—" if value is None else format(value * scale, spec)


def _n_label(n: int) -> str:
    return "—" if n == 0 else str(n)


def markdown_table(summary: dict[str, Any]) -> str:
    """The method × N table: BPB, CI, change vs base, passes and mean per-unit stage times."""
    pct = int(round(summary.get("confidence", 0.95) * 100))
    lines = [
        f"| method | N | units | BPB | {pct}% CI | Δ vs base | {pct}% CI of Δ | passes | retrieve ms | "
        "select ms | finetune s | score s | total s |",
        "|---|---:|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary["results"]:
        t = row["time_mean_s"]
        delta = row["delta_vs_base"]
        rel = row["relative_change"]
        delta_text = "—" if delta is None else f"{delta:+.4f} ({rel * 100:+.1f}%)" if rel is not None else f"{delta:+.4f}"
        dci = row["delta_ci"]
        lines.append(
            f"| {row['method']} | {_n_label(row['n'])} | {row['units']} | {row['bpb']:.4f} | "
            f"[{row['ci'][0]:.4f}, {row['ci'][1]:.4f}] | {delta_text} | "
            f"{'—' if dci is None else f'[{dci[0]:+.4f}, {dci[1]:+.4f}]'} | {row['passes_mean']:.1f} | "
            f"{(t['embed'] + t['retrieve']) * 1e3:.1f} | {t['select'] * 1e3:.1f} | {t['finetune']:.2f} | "
            f"{t['score']:.2f} | {t['total']:.2f} |"
        )
    return "\n".join(lines)


def group_table(summary: dict[str, Any]) -> str:
    """Per group (task or domain): BPB of each method and N, one column each."""
    by_group = summary.get("by_group", {})
    columns: list[tuple[str, int]] = [(r["method"], r["n"]) for r in summary["results"]]
    header = ["group", "units"] + [m if n == 0 else f"{m} N={n}" for m, n in columns]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * len(columns)]
    for group, rows in by_group.items():
        found = {(r["method"], r["n"]): r for r in rows}
        units = max((r["units"] for r in rows), default=0)
        cells = [_fmt(found[c]["bpb"], ".4f") if c in found else "—" for c in columns]
        lines.append("| " + " | ".join([group, str(units), *cells]) + " |")
    return "\n".join(lines)


def summary_markdown(summary: dict[str, Any], title: str = "BPB evaluation") -> str:
    """The whole markdown report: a header with the run's facts, the main table and the per-group one."""
    run = summary.get("run", {})
    facts = [f"{summary['units']} units", f"{summary['bootstrap']} bootstrap resamples (seed {summary['seed']})"]
    for key in ("protocol", "mode", "k", "exclude_task"):
        if key in run:
            facts.append(f"{key} {run[key]}")
    status = "" if summary.get("complete", True) else (
        f"\n\n**Incomplete**: {summary['jobs']['done']} of {summary['jobs']['total']} (unit, method, N) jobs done; "
        "rerun with resume to finish."
    )
    return (
        f"# {title}\n\n{', '.join(facts)}. BPB is byte weighted over units; lower is better. "
        f"Times are mean wall seconds per unit (retrieve includes the query embedding).{status}\n\n"
        f"{markdown_table(summary)}\n\n## Per group\n\n{group_table(summary)}\n"
    )


# ---------------------------------------------------------------------------------------- files


