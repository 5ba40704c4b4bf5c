"""Test-time finetuning cost: overhead beyond the compulsory passes, gradient reuse, published protocol.

    python benchmarks/bench_ttft.py [--queries 3] [--n 20] [--length 256] [--skip-reference]

SmolLM2-135M with LoRA on real ~256-token chunks of the Python language reference (pydoc_data);
each query is a held-out topic, its pool the chunks of every other topic. Measured in one run:
 (a) adapt() wall time / (forward-backward passes x median time of one pass)      target <= 1.05
 (b) finetune time with gradient reuse r=2 / with r=1 on the same multiset         target <= 0.6
 (c) published protocol (full finetuning, padded to 1024, r=2) / ours per query   target >= 5x
 (d) peak resident memory after the LoRA phases and after the full-finetuning phase
Writes benchmarks/results/bench_ttft.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hullft_agent.adapter import TestTimeAdapter  # noqa: E402
from hullft_agent.candidates import InMemoryCandidates  # noqa: E402
from hullft_agent.config import AdapterConfig, FinetuneConfig, SelectionConfig  # noqa: E402
from hullft_agent.corpora import pydoc_topic_chunks  # noqa: E402
from hullft_agent.embedding import Embedder  # noqa: E402
from hullft_agent.finetune import create_session, encode_for_training, train_multiset  # noqa: E402
from hullft_agent.models import load_model  # noqa: E402

# Topics whose text appears nowhere else in pydoc_data, so the pool holds no copy of the query.
QUERY_TOPICS = ["raise", "import", "global", "return", "assert"]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_pass_time(session, tokenizer, text: str, max_length: int, repeats: int) -> float:
    """Median wall time of one forward+backward of `text` (the compulsory unit of work)."""
    batch = encode_for_training(tokenizer, text, max_length=max_length, pad_to=None)
    device = next(session.model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        loss = session.model(**batch).loss
        loss.backward()
        times.append(time.perf_counter() - start)
        for p in session.trainable_parameters():
            p.grad = None
    return statistics.median(times[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=3)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--length", type=int, default=256, help="token length of each training sequence")
    parser.add_argument("--pass-repeats", type=int, default=7)
    parser.add_argument("--skip-reference", action="store_true", help="skip (c), the slow published protocol")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_ttft.json"))
    args = parser.parse_args()
    torch.manual_seed(0)

    embedder = Embedder()
    loaded = load_model()
    tokenizer = loaded.tokenizer
    chunks = pydoc_topic_chunks(chunk_chars=1600)
    # Keep only chunks long enough that every training sequence is exactly `length` tokens.
    long_enough = [c for c in chunks if len(tokenizer(c.text).input_ids) >= args.length]
    topics = [t for t in QUERY_TOPICS if any(c.source == t for c in long_enough)][: args.queries]
    vectors = embedder.encode([c.text for c in long_enough])

    lora_ft = FinetuneConfig(max_length=args.length, refresh_interval=2)
    config = AdapterConfig(selection=SelectionConfig(method="hullft", n=args.n, k=args.k), finetune=lora_ft)
    rows = []
    adapter = None
    multisets: dict[str, tuple[list[str], list[int], float]] = {}
    for topic in topics:
        keep = [i for i, c in enumerate(long_enough) if c.source != topic]
        query = next(c for c in long_enough if c.source == topic).text
        source = InMemoryCandidates(
            [long_enough[i].text for i in keep], vectors[keep], ids=[long_enough[i].id for i in keep]
        )
        if adapter is None:
            adapter = TestTimeAdapter(loaded, embedder=embedder, source=source, config=config)
        pass_time = median_pass_time(adapter.session, tokenizer, query, args.length, args.pass_repeats)
        report = adapter.adapt(query, source=source)
        texts = [source.texts[source.ids.index(i)] for i in report.selected_ids]
        counts = report.counts
        overhead = report.timings["total"] / (report.passes * pass_time)

        adapter.session.reset()
        no_reuse = train_multiset(adapter.session, texts, counts, lora_ft.model_copy(update={"refresh_interval": 1}))
        adapter.session.reset()
        reuse = train_multiset(adapter.session, texts, counts, lora_ft)
        adapter.session.reset()
        multisets[topic] = (texts, counts, report.timings["total"])
        rows.append({
            "query_topic": topic,
            "support": len(counts),
            "counts": counts,
            "passes_r2": reuse.passes,
            "passes_r1": no_reuse.passes,
            "median_pass_s": pass_time,
            "adapt_total_s": report.timings["total"],
            "adapt_timings_s": report.timings,
            "overhead_ratio": overhead,
            "finetune_r1_s": no_reuse.wall_time,
            "finetune_r2_s": reuse.wall_time,
            "reuse_time_ratio": reuse.wall_time / no_reuse.wall_time,
        })
        print(f"[{topic}] support {len(counts)} passes {report.passes} pass {pass_time:.3f}s "
              f"adapt {report.timings['total']:.2f}s overhead {overhead:.3f} "
              f"reuse ratio {rows[-1]['reuse_time_ratio']:.3f}", flush=True)
    lora_peak = peak_rss_mib()

    reference = None
    if not args.skip_reference:
        # Published protocol on the first query's multiset: full finetuning, padded to 1024, r=2.
        topic = rows[0]["query_topic"]
        texts, counts, ours = multisets[topic]
        full_model = load_model()
        ref_ft = FinetuneConfig(method="full", lr=5e-5, max_length=1024, pad_to=1024, refresh_interval=2)
        session = create_session(full_model.model, full_model.tokenizer, ref_ft)
        start = time.perf_counter()
        ref = train_multiset(session, texts, counts, ref_ft)
        ref_time = time.perf_counter() - start
        reference = {"query_topic": topic, "passes": ref.passes, "finetune_s": ref_time,
                     "ours_adapt_s": ours, "speedup": ref_time / ours}
        print(f"[reference] full FT padded to 1024: {ref_time:.1f}s vs ours {ours:.2f}s "
              f"-> {reference['speedup']:.1f}x", flush=True)
    full_peak = peak_rss_mib()

    overhead = statistics.median(r["overhead_ratio"] for r in rows)
    reuse_ratio = statistics.median(r["reuse_time_ratio"] for r in rows)
    checks = {
        "adapt_overhead_ratio": {"value": overhead, "target": "<= 1.05", "pass": overhead <= 1.05},
        "reuse_time_ratio_r2_over_r1": {"value": reuse_ratio, "target": "<= 0.6", "pass": reuse_ratio <= 0.6},
    }
    if reference:
        checks["speedup_vs_published_protocol"] = {
            "value": reference["speedup"], "target": ">= 5", "pass": reference["speedup"] >= 5,
        }
    result = {
        "benchmark": "bench_ttft",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_ttft.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": str(loaded.device)},
        "settings": {"n": args.n, "k": args.k, "length": args.length, "lr": lora_ft.lr,
                     "lora_r": lora_ft.lora.r, "refresh_interval": 2},
        "per_query": rows,
        "reference": reference,
        "peak_rss_mib": {"after_lora_phases": lora_peak, "after_full_finetuning": full_peak},
        "checks": checks,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    print()
    print(f"{'check':<34} {'value':>9}  {'target':<8} pass")
    for name, check in checks.items():
        print(f"{name:<34} {check['value']:>9.3f}  {check['target']:<8} {check['pass']}")
    print(f"{'peak RSS after LoRA phases (MiB)':<34} {lora_peak:>9.0f}")
    print(f"{'peak RSS after full FT (MiB)':<34} {full_peak:>9.0f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
