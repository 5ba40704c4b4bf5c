"""The comparison's tables, plots and report.md (what `hullft-agent demo` and bench_agent print and write)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from hullft_agent.agents.compare import (
    CompareConfig,
    Comparison,
    continual_summary,
    mode_totals,
)
from hullft_agent.config import DECISION_FORMATS

# ---------------------------------------------------------------------------------------- tables


def _fmt(value: Any, spec: str = ".2f", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[list[str]]:
    return [header, *rows]


def render_text(table: list[list[str]]) -> str:
    """A fixed-width text table (first column left-aligned, the others right-aligned)."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for n, row in enumerate(table):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(table: list[list[str]]) -> str:
    header, *rows = table
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def games_table(result: Comparison) -> list[list[str]]:
    """Per game: score/max, commands and outcome of every mode."""
    modes = list(result.episodes)
    order: list[str] = []
    for eps in result.episodes.values():
        order += [e.game_file for e in eps if e.game_file not in order]
    rows = []
    for game_file in order:
        row = [Path(game_file).stem]
        for mode in modes:
            ep = next((e for e in result.episodes[mode] if e.game_file == game_file), None)
            if ep is None:
                row.append("-")
            elif ep.outcome == "error":
                row.append("cannot start")
            else:
                row.append(f"{ep.score}/{ep.max_score} in {ep.moves} ({ep.outcome})")
        rows.append(row)
    return _table(["game", *modes], rows)


def totals_table(result: Comparison) -> list[list[str]]:
    """Per mode: total and mean score, wins, steps, one-off setup (bc's training), per-step latency (adapt / act)."""
    rows = []
    for mode, eps in result.episodes.items():
        t = mode_totals(eps)
        rows.append([
            mode, str(t["games"]), f"{t['score']}/{t['max_score']}",
            f"{_fmt(t['mean_score'])} ± {_fmt(t['sd_score'])}", str(t["wins"]), str(t["steps"]),
            _fmt(result.mode_setup.get(mode, {}).get("seconds"), ".0f"), _fmt(t["adapt_s"]), _fmt(t["act_s"]),
            f"{_fmt(t['trained_per_step'], '.1f')}/{_fmt(t['selected_per_step'], '.1f')}",
        ])
    return _table(["mode", "games", "score", "mean ± sd", "wins", "steps", "setup s (once)", "adapt s/step",
                   "act s/step", "trained/selected per step"], rows)


def continual_table(result: Comparison) -> list[list[str]]:
    """Per mode: scores in stream order, half means, their change, and the change against none's on the same games."""
    rows = []
    for mode, c in continual_summary(result).items():
        ci = c["vs_none_ci95"]
        rows.append([
            mode, " ".join(str(v) for v in c["scores"]) or "-", _fmt(c["first_half"]), _fmt(c["second_half"]),
            _fmt(c["change"], "+.2f"), _fmt(c["none_change"], "+.2f"),
            "-" if c["vs_none"] is None else f"{c['vs_none']:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]",
        ])
    return _table(["mode", "scores in stream order", "first half", "second half", "second − first",
                   "none's second − first", "− none's [95% CI]"], rows)


def bpb_table(result: Comparison) -> list[list[str]]:
    """Per mode: BPB of the chosen commands, BPB of the engine's next winning command, agreement with it."""
    rows = []
    for mode, eps in result.episodes.items():
        t = mode_totals(eps)
        agree = t["expert_agreement"]
        rows.append([mode, _fmt(t["action_bpb"], ".3f"), _fmt(t["expert_bpb"], ".3f"),
                     "-" if agree is None else f"{100 * agree:.0f}%"])
    return _table(["mode", "BPB chosen commands", "BPB expert commands", "chose the expert's command"], rows)


def differences_lines(result: Comparison) -> list[str]:
    lines = []
    for mode, d in result.differences().items():
        lines.append(
            f"{mode} - none: {d['mean']:+.2f} points per game (sd {d['sd']:.2f}, 95% bootstrap CI "
            f"[{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}], better on {d['better']}, worse on {d['worse']} "
            f"of {d['games']} games)"
        )
    return lines


def summary_text(result: Comparison) -> str:
    """The tables as the CLI prints them."""
    parts = ["per game (score/max in commands (outcome)):", render_text(games_table(result)), "",
             "totals (latency = mean seconds per command):", render_text(totals_table(result)), "",
             "bits per byte of the commands under each mode's model (lower is better):", render_text(bpb_table(result)),
             "", "continual: mean score of the second half of the stream minus the first, against none's on the same "
             "games:", render_text(continual_table(result))]
    diffs = differences_lines(result)
    if diffs:
        parts += ["", *diffs]
    parts += [f"{note}" for note in result.notes]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------- report


def _save_plot(plt: Any, fig: Any, ax: Any, ylabel: str, title: str, path: Path) -> str:
    """Label, save (120 dpi) and close one figure; return the file's name for the report."""
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def _plots(result: Comparison) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        result.notes.append('plots skipped: matplotlib is not installed (pip install "hullft-agent[bench]")')
        return []
    modes = list(result.episodes)
    files: list[str] = []
    games: list[str] = []
    for eps in result.episodes.values():
        games += [e.game_file for e in eps if e.game_file not in games and e.outcome != "error"]
    if games:
        fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(games) + 2), 3.6))
        width = 0.8 / len(modes)
        for m, mode in enumerate(modes):
            scores = []
            for g in games:
                ep = next((e for e in result.episodes[mode] if e.game_file == g), None)
                scores.append(ep.score if ep is not None and ep.outcome != "error" else np.nan)
            ax.bar(np.arange(len(games)) + (m - (len(modes) - 1) / 2) * width, scores, width, label=mode)
        ax.set_xticks(np.arange(len(games)), [Path(g).stem.replace("game-", "") for g in games], rotation=30)
        files.append(_save_plot(plt, fig, ax, "score", "score per held-out game", result.out_dir / "scores.png"))
    stream = continual_summary(result)
    if any(c["scores"] for c in stream.values()):
        longest = max(len(c["scores"]) for c in stream.values())
        fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * longest + 3), 3.6))
        for mode, c in stream.items():
            if not c["scores"]:
                continue
            x = np.arange(1, len(c["scores"]) + 1)
            (line,) = ax.plot(x, c["cumulative_mean"], marker=".", label=mode)
            ax.scatter(x, c["scores"], s=12, alpha=0.35, color=line.get_color())
        ax.set_xlabel("game in the stream (play order)")
        ax.set_xticks(np.arange(1, longest + 1))
        files.append(_save_plot(plt, fig, ax, "score (line: cumulative mean; dots: each game)",
                                "score along the stream of held-out games", result.out_dir / "continual.png"))
    totals = {mode: mode_totals(eps) for mode, eps in result.episodes.items()}
    shown = [m for m in modes if totals[m]["steps"]]
    if shown:
        fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(shown) + 1.5), 3.6))
        adapt = [totals[m]["adapt_s"] for m in shown]
        act = [totals[m]["act_s"] for m in shown]
        ax.bar(shown, adapt, label="adapt")
        ax.bar(shown, act, bottom=adapt, label="act (score commands)")
        files.append(_save_plot(plt, fig, ax, "seconds per command", "mean latency per command",
                                result.out_dir / "latency.png"))
    return files


def _choice_rule(c: CompareConfig) -> str:
    if c.strategy == "generate":
        return "Commands generated by the model and matched to the closest admissible one"
    how = "the best-scored command" if c.temperature == 0 else f"a command drawn ∝ exp(score / {c.temperature:g})"
    return f"Each step plays {how}, score = {c.scoring} of the command's token log-probabilities"


def _format_name(fmt: Any) -> str:
    """A decision format's name in `DECISION_FORMATS`, or its fields."""
    return next((name for name, known in DECISION_FORMATS.items() if known == fmt), repr(fmt))


def write_report(result: Comparison) -> Path:
    """Write `report.md` (and the plots) into the comparison's folder; return the report's path."""
    plots = _plots(result)
    c = result.config
    lines = [
        "# TextWorld agent: adaptation modes side by side",
        "",
        f"{len(next(iter(result.episodes.values()), []))} held-out tw-cooking games ({c.split} split; "
        f"recipe {c.recipe}, "
        f"take {c.take}, rooms {c.rooms}{', open' if c.open else ''}{', cook' if c.cook else ''}"
        f"{', cut' if c.cut else ''}), memory of {result.memory_rows} window rows (w = {c.window}) from "
        f"{c.train_games} training games ({c.expert_episodes} expert + {c.explore_episodes} exploring episodes "
        f"each), then the agent's own episodes. {_choice_rule(c)}"
        f"{'; the prompt keeps the recipe once read' if c.keep_recipe else ''}"
        f"{'; the model answers the prompt trimmed to ' + _format_name(c.prompt_format) if c.prompt_format else ''}"
        "; expert decisions answer with the "
        f"{c.expert_answers}'s command; "
        f"N = {c.n}, K = {c.k}, lr {c.lr}, sequences ≤ {c.max_length} tokens"
        f"{f', test-time LoRA on the last {c.lora_layers} blocks' if c.lora_layers else ''}"
        f"{f', at most {c.max_instances} instances trained per command' if c.max_instances else ''}, "
        f"at most {c.max_steps} commands "
        f"(and {c.step_factor}× the walkthrough). Wall time {result.seconds:.0f} s (setup {result.setup_s:.0f} s).",
        "",
    ]
    bc = result.mode_setup.get("bc") or result.mode_setup.get("bc_decisions")
    if bc:
        lines += [f"`bc` is offline behaviour cloning: one LoRA trained once before the games on the {bc['rows']} "
                  f"decision rows of won episodes in the training memory ({bc['epochs']} epochs, {bc['steps']} Adam "
                  f"steps, loss on the command, training prompts ≤ {c.decision_max_length} tokens) in "
                  f"{bc['seconds']:.0f} s, then fixed: no test-time selection; `bc_decisions` adapts that model per "
                  "game like `decisions`.", ""]
    if result.interrupted:
        lines += ["**Interrupted**: the tables hold the games that finished (and the interrupted one).", ""]
    lines += ["## Per game", "", "score/max in commands (outcome)", "", render_markdown(games_table(result)), "",
              "## Totals", "", render_markdown(totals_table(result)), ""]
    diffs = differences_lines(result)
    if diffs:
        lines += [f"- {d}" for d in diffs] + [""]
    lines += ["## Bits per byte", "",
              "BPB of the commands the agent chose, and of the engine's next winning command at the same states, "
              "under each mode's (adapted) model.", "", render_markdown(bpb_table(result)), ""]
    lines += ["## Continual: the score along the stream", "",
              "Each mode plays the games in the same order and (except none and bc) can learn from its own earlier "
              "games. Halves: the first and the last ⌊n/2⌋ games. Later games can be easier or harder, so the "
              "change is compared with none's on the same games (95% bootstrap interval, each half resampled).", "",
              render_markdown(continual_table(result)), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    if result.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    path = result.out_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
