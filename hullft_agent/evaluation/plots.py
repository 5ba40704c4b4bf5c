"""PNG plots of an evaluation summary (matplotlib's Agg canvas, no pyplot: no display needed).

`bpb_vs_n`: BPB against N per method, with the bootstrap interval as error bars and `base` as a
dashed line, beside the paired change against base. `bpb_vs_time`: BPB against mean wall seconds per unit (adapt + score), one line per
method through its N values, each point labelled with N.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hullft_agent.files import atomic_path

_COLORS = {
    "knn": "tab:blue",
    "sift": "tab:orange",
    "hullft": "tab:green",
    "hullft-noreuse": "tab:olive",
    "base": "black",
}


def _figure() -> tuple[Any, Any]:
    """A figure on the Agg canvas, made without pyplot: no global backend switch, nothing to close."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Save through a temporary name and rename, so a plot file is never half written."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    return Path(path)


def _series(summary: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, list[dict[str, Any]]]]:
    base = None
    methods: dict[str, list[dict[str, Any]]] = {}
    for row in summary.get("results", []):
        if row["method"] == "base":
            base = row
        else:
            methods.setdefault(row["method"], []).append(row)
    for rows in methods.values():
        rows.sort(key=lambda r: r["n"])
    return base, methods


def plot_bpb_vs_n(summary: dict[str, Any], path: str | os.PathLike[str], *, title: str = "BPB evaluation") -> Path:
    """Left: BPB against N per method with bootstrap intervals, base dashed. Right: the paired change
    against base (its interval is much narrower: the units' own difficulty cancels). Methods sharing
    an N are drawn slightly apart so their bars do not hide each other."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    base, methods = _series(summary)
    fig = Figure(figsize=(11, 4.4))
    FigureCanvasAgg(fig)
    ax, dax = fig.subplots(1, 2)
    centre = (len(methods) - 1) / 2
    all_n = sorted({r["n"] for rows in methods.values() for r in rows})
    for i, (method, rows) in enumerate(methods.items()):
        xs = [r["n"] * (1 + 0.03 * (i - centre)) for r in rows]
        ys = [r["bpb"] for r in rows]
        err = [[max(0.0, r["bpb"] - r["ci"][0]) for r in rows], [max(0.0, r["ci"][1] - r["bpb"]) for r in rows]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=method, color=_COLORS.get(method))
        paired = [r for r in rows if r.get("delta_vs_base") is not None]
        if paired:
            dx = [r["n"] * (1 + 0.03 * (i - centre)) for r in paired]
            dy = [r["delta_vs_base"] for r in paired]
            derr = [[max(0.0, r["delta_vs_base"] - r["delta_ci"][0]) for r in paired],
                    [max(0.0, r["delta_ci"][1] - r["delta_vs_base"]) for r in paired]]
            dax.errorbar(dx, dy, yerr=derr, marker="o", capsize=3, label=method, color=_COLORS.get(method))
    if base is not None:
        ax.axhline(base["bpb"], color="black", linestyle="--", linewidth=1, label="base")
        ax.axhspan(base["ci"][0], base["ci"][1], color="grey", alpha=0.12)
    dax.axhline(0.0, color="black", linestyle="--", linewidth=1)
    pct = int(round(summary.get("confidence", 0.95) * 100))
    for axis in (ax, dax):
        if all_n:
            if len(all_n) > 1 and all_n[-1] / all_n[0] >= 8:
                axis.set_xscale("log")
            axis.set_xticks(all_n)
            axis.set_xticklabels([str(n) for n in all_n])
        axis.set_xlabel("N (finetuning multiset size)")
        axis.grid(True, alpha=0.3)
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title(f"BPB vs N ({summary.get('units', '?')} units, {pct}% CI)")
    dax.set_ylabel("BPB change vs base (paired)")
    dax.set_title(f"change vs base ({pct}% paired CI)")
    ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def plot_bpb_vs_time(
    summary: dict[str, Any], path: str | os.PathLike[str], *, title: str = "BPB evaluation"
) -> Path:
    """BPB against mean wall seconds per unit, one line per method through its N values."""
    base, methods = _series(summary)
    fig, ax = _figure()
    for method, rows in methods.items():
        xs = [r["time_mean_s"]["total"] for r in rows]
        ys = [r["bpb"] for r in rows]
        ax.plot(xs, ys, marker="o", label=method, color=_COLORS.get(method))
        for x, y, r in zip(xs, ys, rows, strict=True):
            ax.annotate(f"N={r['n']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if base is not None:
        ax.plot([base["time_mean_s"]["total"]], [base["bpb"]], marker="s", color="black", linestyle="none",
                label="base")
        ax.axhline(base["bpb"], color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("mean wall time per unit, seconds (adapt + score)")
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title(f"{title}: BPB vs time")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)
