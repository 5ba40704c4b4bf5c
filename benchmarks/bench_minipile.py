"""Mini-Pile BPB: base vs kNN vs SIFT vs HullFT (with and without gradient reuse), per domain.

    python benchmarks/bench_minipile.py            # default size: ~11 min on a 2-core CPU (estimated)
    python benchmarks/bench_minipile.py --quick    # smoke run, 102 s measured: proves the pipeline end to end
    python benchmarks/bench_minipile.py --test-per-domain 5 --n 5 20 50 --seq-chars 1000   # larger

SmolLM2-135M-Instruct (packaged, LoRA, per-query restarts) and all-MiniLM-L6-v2. Six offline text
domains (wiki, news, newsgroups from gensim's test data; code = stdlib sources; docs = pydoc_data;
maths = mathematics-dataset), each split by document into memory sequences and held-out test
sequences (see hullft_agent/evaluation/minipile.py). Each test sequence is a query: every method
adapts to it from the K nearest memory sequences, then the sequence's BPB is scored.

Default size, chosen to finish in about ten minutes here: 2 test sequences per domain (12 units),
200 memory sequences per domain, ~400 characters per sequence (~110 tokens), K = 200, N = 20, all five
methods: about 72 LoRA forward-backward passes per unit (20 knn + 20 sift + ~12 hullft + 20
hullft-noreuse) at ~0.7 s each, so ~50 s per unit plus ~1 min of setup (estimated from the quick
run's 0.68 s per pass; the full size was not run when this was written). With 12 units the bootstrap
intervals of BPB are wide: read the paired change against base and the per-domain table rather than
small gaps between methods. Timings are wall clock on a shared machine: other load inflates them.

Writes benchmarks/results/bench_minipile.json, bench_minipile.md, bench_minipile_bpb_vs_n.png and
bench_minipile_bpb_vs_time.png (--quick: bench_minipile_quick.*); per-unit numbers go to --work-dir
(default ~/.cache/hullft-agent/bench_minipile, resumable with --resume).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hullft_agent.config import FinetuneConfig, default_cache_dir  # noqa: E402
from hullft_agent.evaluation import METHODS, EvalConfig  # noqa: E402
from hullft_agent.evaluation.minipile import DOMAINS, build_minipile, run_minipile  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
WORK = default_cache_dir() / "bench_minipile"

QUICK = {"test_per_domain": 1, "train_per_domain": 40, "seq_chars": 300, "n": [4], "k": 40, "bootstrap": 200}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke size: 1 test sequence per domain, 40 memory sequences, 300 chars, N=4, K=40")
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS))
    parser.add_argument("--test-per-domain", type=int, default=2)
    parser.add_argument("--train-per-domain", type=int, default=200)
    parser.add_argument("--seq-chars", type=int, default=400)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--n", nargs="+", type=int, default=[20])
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--mode", choices=["per_query", "per_task"], default="per_query")
    parser.add_argument("--protocol", choices=["lora", "reference"], default="lora")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--work-dir", default=None,
                        help=f"per-unit results, resumable (default {WORK}[-quick])")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--json", default=str(RESULTS / "bench_minipile.json"))
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
        args.work_dir = args.work_dir or f"{WORK}-quick"
        if args.json == str(RESULTS / "bench_minipile.json"):
            args.json = str(RESULTS / "bench_minipile_quick.json")

    args.work_dir = args.work_dir or str(WORK)
    start = time.perf_counter()
    from hullft_agent.embedding import Embedder
    from hullft_agent.models import load_model

    pile = build_minipile(args.domains, train_per_domain=args.train_per_domain,
                          test_per_domain=args.test_per_domain, seq_chars=args.seq_chars)
    for domain, reason in pile.skipped.items():
        print(f"domain {domain} skipped: {reason}")
    print(f"mini-Pile: {len(pile.train)} memory sequences, {len(pile.test)} test sequences "
          f"({', '.join(pile.domains)}), built in {time.perf_counter() - start:.1f}s")
    embedder = Embedder()
    loaded = load_model()
    setup_s = time.perf_counter() - start
    config = EvalConfig(methods=args.methods, n=args.n, k=args.k, mode=args.mode, protocol=args.protocol,
                        bootstrap=args.bootstrap, finetune=FinetuneConfig())
    result = run_minipile(pile, loaded, embedder=embedder, out_dir=args.work_dir, config=config,
                          resume=args.resume, overwrite=not args.resume)
    wall_s = time.perf_counter() - start

    out = Path(args.json)
    stem = out.with_suffix("")
    files = {}
    for key, suffix in (("plot_n", "_bpb_vs_n.png"), ("plot_time", "_bpb_vs_time.png")):
        if key in result.files:
            target = Path(f"{stem}{suffix}")
            shutil.copyfile(result.files[key], target)
            files[key] = str(target.relative_to(ROOT)) if target.is_relative_to(ROOT) else str(target)
    md = Path(f"{stem}.md")
    md.write_text(result.markdown)
    payload = {
        "benchmark": "minipile",
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_minipile.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_threads": __import__("torch").get_num_threads()},
        "model": f"smollm2-135m-instruct (LoRA r={config.finetune.lora.r}, lr {config.finetune.lr:g}, "
                 f"max_length {config.finetune.max_length})", "embedder": "all-MiniLM-L6-v2",
        "wall_s": round(wall_s, 1), "setup_s": round(setup_s, 1),
        "pile": {**pile.settings, "counts": pile.counts(), "skipped": pile.skipped},
        "summary": result.summary,
        "files": files,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    print(result.markdown)
    print(f"wall {wall_s:.0f}s (setup {setup_s:.0f}s); wrote {out}, {md.name} and plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
