"""Episode BPB on real TextWorld games: base vs kNN vs SIFT vs HullFT (with and without gradient reuse).

    python benchmarks/bench_episodes.py --sweep    # LoRA rank / targets / lr sweep on the VALID split only
    python benchmarks/bench_episodes.py            # the comparison on the TEST split (>= 30 units, N = 20)
    python benchmarks/bench_episodes.py --quick    # smoke size: proves the pipeline end to end

One LanceDB trajectory memory (window rows of 4 steps, packaged all-MiniLM-L6-v2) holds TextWorld cooking
episodes of three disjoint game sets: `--train-games` training games played once by the walkthrough
(expert) and `--explore` times by the exploratory policy, and the expert episode of each valid and test
game. Held-out units are consecutive 4-step windows of the valid (sweep) or test (comparison) episodes.
Each unit's candidates are the K nearest memory rows of *other games* (`exclude_task`: a game's other
episodes would be near copies of the unit), so adaptation can only use experience from different games.
Every unit restarts from the base model (per_query). SmolLM2-135M-Instruct + LoRA, training sequences
truncated to `--max-length` tokens.

The sweep compares a few LoRA settings with HullFT at N = 20 on the valid split and writes
benchmarks/results/bench_episodes_sweep.{json,md}; the comparison reads the chosen setting from the flags
(defaults: the library's defaults) and writes benchmarks/results/bench_episodes.{json,md} and two plots.
Per-unit numbers go to --work-dir (default ~/.cache/hullft-agent/bench_episodes), resumable with --resume.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hullft_agent.config import LLAMA_TARGET_MODULES, FinetuneConfig, LoRAConfig, default_cache_dir  # noqa: E402
from hullft_agent.evaluation import METHODS, EvalConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WORK = default_cache_dir() / "bench_episodes"
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]

#: The sweep grid: (name, LoRA rank, target modules, learning rate). Small on purpose (2 cores).
SWEEP = [
    ("r8-all-lr5e-4", 8, list(LLAMA_TARGET_MODULES), 5e-4),
    ("r8-all-lr1e-3", 8, list(LLAMA_TARGET_MODULES), 1e-3),
    ("r8-all-lr2e-4", 8, list(LLAMA_TARGET_MODULES), 2e-4),
    ("r16-all-lr5e-4", 16, list(LLAMA_TARGET_MODULES), 5e-4),
    ("r8-attn-lr5e-4", 8, ATTENTION, 5e-4),
]

QUICK = {"train_games": 4, "explore": 1, "test_games": 1, "valid_games": 1, "n": [4], "k": 40,
         "max_units": 3, "bootstrap": 200}


def build_memory(args: argparse.Namespace, embedder: Any) -> tuple[Any, dict[str, Any]]:
    """Train, valid and test games in one memory (resumable: episodes already logged are skipped)."""
    from hullft_agent.envs.textworld import build_textworld_memory_with_summary

    path = Path(args.work_dir) / "memory"
    built: dict[str, Any] = {}
    memory = None
    for split, games, explore in (("train", args.train_games, args.explore), ("valid", args.valid_games, 0),
                                  ("test", args.test_games, 0)):
        memory, summary = build_textworld_memory_with_summary(
            path, split, games, expert_episodes=1, explore_episodes=explore, embedder=embedder,
            granularity="window", window=4, seed=args.seed,
        )
        built[split] = {"games": summary.games, "episodes_logged": summary.episodes, "rows_logged": summary.rows,
                        "by_policy": summary.by_policy, "seconds": round(summary.seconds, 1)}
    built["rows"] = memory.count()
    return memory, built


def finetune_config(args: argparse.Namespace, rank: int | None = None, targets: list[str] | None = None,
                    lr: float | None = None) -> FinetuneConfig:
    lora = LoRAConfig(r=rank or args.lora_r, alpha=2.0 * (rank or args.lora_r),
                      target_modules=targets or args.lora_targets)
    return FinetuneConfig(lora=lora, lr=lr or args.lr, max_length=args.max_length)


def evaluate(units: list[Any], memory: Any, config: EvalConfig, out_dir: Path, args: argparse.Namespace,
             title: str) -> Any:
    """One run on a fresh model copy (LoRA wraps the model in place, so each setting loads its own)."""
    from hullft_agent.evaluation.runner import run_evaluation
    from hullft_agent.models import load_model

    return run_evaluation(
        units, load_model(), embedder=memory.embedder, source=memory, out_dir=out_dir, config=config,
        namespace=memory.namespace, resume=args.resume, overwrite=not args.resume, title=title,
        metadata={"memory": memory.uri, "unit_size": args.unit_size},
    )


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def write(payload: dict[str, Any], out: Path, markdown: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    out.with_suffix(".md").write_text(markdown)


def run_sweep(args: argparse.Namespace, memory: Any, units: list[Any], common: dict[str, Any]) -> int:
    rows = []
    base_bpb = None
    for name, rank, targets, lr in SWEEP:
        config = EvalConfig(methods=["base", "hullft"], n=[args.n[-1]], k=args.k, exclude_task=True,
                            finetune=finetune_config(args, rank, targets, lr), bootstrap=args.bootstrap)
        print(f"sweep {name}: {len(units)} valid units")
        result = evaluate(units, memory, config, Path(args.work_dir) / "sweep" / name, args, f"sweep {name}")
        cells = {r["method"]: r for r in result.summary["results"]}
        base_bpb = cells["base"]["bpb"]
        hull = cells["hullft"]
        rows.append({"setting": name, "lora_r": rank, "targets": targets, "lr": lr, "bpb": hull["bpb"],
                     "delta_ci": hull["delta_ci"], "passes": hull["passes_mean"],
                     "finetune_s": hull["time_mean_s"]["finetune"]})
    best = min(rows, key=lambda r: r["bpb"])
    lines = [f"| setting | LoRA r | targets | lr | BPB (hullft, N = {args.n[-1]}) | vs base [95% paired CI] "
             "| finetune s/unit |", "|---|---:|---|---:|---:|---|---:|"]
    for r in rows:
        mark = " **(best)**" if r is best else ""
        lines.append(f"| {r['setting']}{mark} | {r['lora_r']} | {'all' if len(r['targets']) == 7 else 'attention'} "
                     f"| {r['lr']:g} | {r['bpb']:.4f} | {100 * (r['bpb'] / base_bpb - 1):+.1f}% "
                     f"[{r['delta_ci'][0]:+.3f}, {r['delta_ci'][1]:+.3f}] | {r['finetune_s']:.2f} |")
    markdown = f"# LoRA sweep, valid split ({len(units)} units, base BPB {base_bpb:.4f})\n\n" + "\n".join(lines) + "\n"
    write({**common, "benchmark": "episodes_sweep", "units": len(units), "base_bpb": base_bpb, "settings": rows,
           "best": best["setting"]}, Path(args.json), markdown)
    print(markdown)
    return 0


def near_copy_split(units: list[Any], memory: Any, records: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """BPB per method on units whose nearest allowed memory row is (nearly) the same text, and on the rest.

    TextWorld's templated text repeats across games (e.g. the closing 'prepare meal / eat meal' steps), so
    some units have a near-verbatim twin in other games' episodes: adaptation gains there are real but easy.
    """
    from hullft_agent.evaluation.report import byte_weighted_bpb
    from hullft_agent.evaluation.runner import GuardedSource

    guard = GuardedSource(memory, namespace=memory.namespace, exclude_task=True)
    vectors = memory.embedder.encode([u.text for u in units])
    top = {}
    for unit, vector in zip(units, vectors, strict=True):
        guard.begin(unit)
        pool = guard.candidates(vector, 1)
        top[unit.id] = float(pool.similarities[0]) if len(pool) else 0.0
    twins = {u for u, sim in top.items() if sim >= threshold}
    out: dict[str, Any] = {"threshold": threshold, "units_with_twin": len(twins), "units": len(top),
                           "top_similarity": top, "bpb": {}}
    for method in dict.fromkeys(r["method"] for r in records):
        rows = [r for r in records if r["method"] == method]
        for name, keep in (("with_twin", True), ("without_twin", False)):
            part = [r for r in rows if (r["unit"] in twins) == keep]
            if part:
                out["bpb"].setdefault(method, {})[name] = byte_weighted_bpb(
                    [r["nll_nats"] for r in part], [r["n_bytes"] for r in part])
    return out


def run_comparison(args: argparse.Namespace, memory: Any, units: list[Any], common: dict[str, Any]) -> int:
    config = EvalConfig(methods=args.methods, n=args.n, k=args.k, exclude_task=True,
                        finetune=finetune_config(args), bootstrap=args.bootstrap)
    result = evaluate(units, memory, config, Path(args.work_dir) / ("quick" if args.quick else "test"), args,
                      "TextWorld episode BPB (test split)")
    out = Path(args.json)
    stem = out.with_suffix("")
    files = {}
    for key, suffix in (("plot_n", "_bpb_vs_n.png"), ("plot_time", "_bpb_vs_time.png")):
        if key in result.files:
            target = Path(f"{stem}{suffix}")
            shutil.copyfile(result.files[key], target)
            files[key] = rel(target)
    from hullft_agent.evaluation.results import read_results

    records, _ = read_results(result.files["results"])
    split = near_copy_split(units, memory, records, args.twin_threshold)
    lines = [f"\n## Units with a near-verbatim twin in other games (top similarity >= {args.twin_threshold})\n",
             f"{split['units_with_twin']} of {split['units']} units.\n",
             "| method | BPB, units with a twin | BPB, the other units |", "|---|---:|---:|"]
    for method, cell in split["bpb"].items():
        lines.append(f"| {method} | {cell.get('with_twin', float('nan')):.4f} | "
                     f"{cell.get('without_twin', float('nan')):.4f} |")
    markdown = result.markdown + "\n".join(lines) + "\n"
    write({**common, "benchmark": "episodes", "units": len(units),
           "episodes": len({u.episode for u in units}), "summary": result.summary, "near_copies": split,
           "files": files}, out, markdown)
    print(markdown)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", action="store_true", help="the LoRA sweep on the valid split")
    parser.add_argument("--quick", action="store_true", help="smoke size (4 train games, 3 units, N = 4, K = 40)")
    parser.add_argument("--train-games", type=int, default=30)
    parser.add_argument("--explore", type=int, default=2, help="exploratory episodes per training game")
    parser.add_argument("--valid-games", type=int, default=3)
    parser.add_argument("--test-games", type=int, default=6)
    parser.add_argument("--unit-size", type=int, default=4)
    parser.add_argument("--max-units", type=int, default=None,
                        help="only the first M units (default 12 for the sweep, 30 for the comparison; 0 = all)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--n", nargs="+", type=int, default=[20])
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--lora-r", type=int, default=LoRAConfig().r)
    parser.add_argument("--lora-targets", nargs="+", default=list(LLAMA_TARGET_MODULES))
    parser.add_argument("--lr", type=float, default=FinetuneConfig().lr)
    parser.add_argument("--max-length", type=int, default=128, help="training sequence length cap (tokens)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--twin-threshold", type=float, default=0.98,
                        help="top cosine similarity that counts a unit as having a near-verbatim twin")
    parser.add_argument("--seed", type=int, default=0, help="game seeds and explore policy")
    parser.add_argument("--work-dir", default=None, help=f"memory and per-unit results (default {WORK})")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.work_dir = args.work_dir or f"{WORK}{'-quick' if args.quick else ''}"
    name = "bench_episodes" + ("_sweep" if args.sweep else "") + ("_quick" if args.quick else "")
    args.json = args.json or str(RESULTS / f"{name}.json")
    if args.max_units is None:
        args.max_units = 12 if args.sweep else 30
    args.max_units = args.max_units or None

    start = time.perf_counter()
    from hullft_agent.embedding import Embedder
    from hullft_agent.evaluation.units import episode_units

    memory, built = build_memory(args, Embedder())
    split = "valid" if args.sweep else "test"
    units = episode_units(memory, split=split, unit_size=args.unit_size, max_units=args.max_units)
    print(f"memory {memory.uri}: {built['rows']} rows; {len(units)} {split} units from "
          f"{len({u.episode for u in units})} episodes; built in {time.perf_counter() - start:.0f}s")
    common = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_episodes.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_threads": __import__("torch").get_num_threads()},
        "model": "smollm2-135m-instruct", "embedder": "all-MiniLM-L6-v2",
        "memory": built, "split": split, "k": args.k, "n": args.n, "max_length": args.max_length,
    }
    code = (run_sweep if args.sweep else run_comparison)(args, memory, units, common)
    print(f"wall {time.perf_counter() - start:.0f}s; wrote {args.json}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
