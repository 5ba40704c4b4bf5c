"""Trajectory memory benchmark: logging throughput, top-k retrieval latency and recall, disk size.

    python benchmarks/bench_memory.py                 # full run: 10k and 100k rows (several minutes)
    python benchmarks/bench_memory.py --quick         # 2k and 10k rows, fewer queries (~1 minute)
    python benchmarks/bench_memory.py --sizes 10000,50000 --queries 100 --index-type IVF_HNSW_SQ
    python benchmarks/bench_memory.py --store --store-sizes 10000,100000   # the LangGraph store rows

`--store` measures `LanceDBStore` (langchain_hullft) against LangGraph's `InMemoryStore` on the same
items instead: bulk load, single put and get, semantic / filtered / plain search and namespace listing
latency, at each size of `--store-sizes`. Items are {"text", "tag", "score"} under 4 users' namespaces,
searched within one user's (25 %); both stores embed through the same lookup of precomputed vectors from
the cluster mixture (dim 384), so the figures are the stores' own cost, not an embedder's. Results go
to benchmarks/results/bench_memory_store.json.

Data: synthetic unit vectors of dimension 384 (the packaged embedder's) drawn from a mixture of
200 Gaussian clusters (agent logs repeat themselves, so memory rows cluster), spread over 4
namespaces; queries are fresh draws from the same mixture, retrieved with a namespace prefilter
(25 % of the rows). Texts are synthetic agent steps of about 150 bytes. Logging "with embedding"
uses the real packaged all-MiniLM-L6-v2 on CPU. Recall@k compares the indexed search against the
exact (brute force) search of the same memory.

Prints a table and writes every figure, its target and pass/fail, machine info and the date to
benchmarks/results/bench_memory.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hullft_agent.memory import MemoryConfig, Step, TrajectoryMemory  # noqa: E402
from hullft_agent.memory.testing import HashingEmbedder  # noqa: E402

logger = logging.getLogger("bench_memory")

DIM = 384
NAMESPACES = 4
CLUSTERS = 200
WORDS = (
    "kitchen fridge potato stove counter knife pantry shelf salt pepper garden shovel rose door key "
    "north south east west open close take drop examine inventory look cook slice fry eat recipe "
    "cupboard table chair lamp bedroom bathroom corridor box chest coin book letter note"
).split()
KINDS = ("observation", "action", "thought", "tool")

TARGETS = {
    "append_precomputed_rows_per_s": (">=", 5000.0),
    "retrieval_indexed_p50_ms@100000": ("<=", 20.0),
    "recall_at_k@100000": (">=", 0.95),
}


class Vectors:
    """A fixed mixture of Gaussian clusters on the unit sphere."""

    def __init__(self, dim: int, seed: int = 0, spread: float = 0.8) -> None:
        rng = np.random.default_rng(seed)
        self.centers = rng.standard_normal((CLUSTERS, dim)).astype(np.float32)
        self.centers /= np.linalg.norm(self.centers, axis=1, keepdims=True)
        self.spread = spread / np.sqrt(dim)
        self.dim = dim

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        x = self.centers[rng.integers(0, CLUSTERS, n)]
        x = x + self.spread * rng.standard_normal((n, self.dim)).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_steps(n: int, rng: np.random.Generator, start: int = 0) -> list[Step]:
    words = np.array(WORDS)
    picks = rng.integers(0, len(words), (n, 24))
    steps = []
    for i in range(n):
        j = start + i
        text = f"{KINDS[j % 4]} {j}: " + " ".join(words[picks[i]])
        steps.append(
            Step(
                kind=KINDS[j % 4],
                text=text,
                episode_id=f"ep-{j // 40}",
                step=j % 40,
                task=f"task-{(j // 40) % 10}",
                namespace=f"agent-{(j // 40) % NAMESPACES}",
                reward=float(j % 3) if j % 40 == 39 else None,
                metadata={"source": "bench"},
            )
        )
    return steps


def live_bytes(mem: TrajectoryMemory, table_dir: Path) -> tuple[int, int]:
    """Bytes on disk of the table without its indexes (after optimize(cleanup_older_than=0) only
    the current version is left), and of the indexes the current version references (files of
    superseded indexes younger than 7 days stay on disk in case a concurrent transaction needs them)."""
    files = [f for f in table_dir.rglob("*") if f.is_file() and "_indices" not in f.parts]
    data = sum(f.stat().st_size for f in files)
    indexes = sum(int(getattr(i, "size_bytes", 0) or 0) for i in mem.table.list_indices())
    return data, indexes


def percentiles(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values) * 1000.0
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 95))


def open_memory(root: Path, name: str, dim: int, **overrides) -> TrajectoryMemory:
    config = MemoryConfig(
        uri=str(root), table=name, optimize_every=0, index_threshold=10**12, read_consistency_interval=None
    )
    return TrajectoryMemory(config, embedder=HashingEmbedder(dim, model_name="synthetic"), **overrides)


def fill(mem: TrajectoryMemory, n: int, vectors: Vectors, batch: int, seed: int) -> float:
    """Append n rows in batches with precomputed vectors; return the seconds spent in add()."""
    rng = np.random.default_rng(seed)
    spent = 0.0
    for start in range(0, n, batch):
        m = min(batch, n - start)
        steps = make_steps(m, rng, start)
        vecs = vectors.draw(m, rng)
        t0 = time.perf_counter()
        mem.add(steps, vectors=vecs)
        spent += time.perf_counter() - t0
    return spent


def time_queries(
    mem: TrajectoryMemory, queries: np.ndarray, k: int, *, exact: bool, fields=None
) -> tuple[list[float], list]:
    namespace = "agent-1"
    mem.candidates(queries[0], k, namespace=namespace, exact=exact, fields=fields)  # warm caches
    latencies, results = [], []
    for q in queries:
        t0 = time.perf_counter()
        pool = mem.candidates(q, k, namespace=namespace, exact=exact, fields=fields)
        latencies.append(time.perf_counter() - t0)
        results.append(pool.ids)
    return latencies, results


def bench_embedding(root: Path, rows: int, batch: int) -> dict[str, float]:
    from hullft_agent.embedding import Embedder

    t0 = time.perf_counter()
    embedder = Embedder()
    load = time.perf_counter() - t0
    mem = TrajectoryMemory(
        MemoryConfig(uri=str(root), table="embedded", optimize_every=0, index_threshold=10**12),
        embedder=embedder,
    )
    rng = np.random.default_rng(7)
    steps = make_steps(rows, rng)
    t0 = time.perf_counter()
    for start in range(0, rows, batch):
        mem.add(steps[start : start + batch])
    spent = time.perf_counter() - t0
    t0 = time.perf_counter()
    embedder.encode([s.text for s in steps[: min(rows, 512)]])
    encode_only = min(rows, 512) / (time.perf_counter() - t0)
    lat = []
    for i in range(20):
        t0 = time.perf_counter()
        mem.log_step("live", "action", f"take item {i}")
        lat.append(time.perf_counter() - t0)
    return {
        "embedder_load_s": load,
        "append_embedded_rows_per_s": rows / spent,
        "embedder_only_rows_per_s": encode_only,
        "log_step_embedded_p50_ms": percentiles(lat)[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000", help="table sizes for retrieval (comma separated)")
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--batch", type=int, default=1000, help="rows per add() call when logging")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("-k", type=int, default=200)
    parser.add_argument(
        "--embed-rows", type=int, default=2000, help="rows logged with the real embedder (0: skip)"
    )
    parser.add_argument("--index-type", default="IVF_FLAT")
    parser.add_argument(
        "--quick", action="store_true", help="sizes 2000,10000, 30 queries, 256 embedded rows"
    )
    parser.add_argument("--workdir", default=None, help="where the tables are written (default: a temp dir)")
    parser.add_argument("--store", action="store_true", help="benchmark the LangGraph store against InMemoryStore")
    parser.add_argument("--store-sizes", default="10000,100000", help="store items per run (comma separated)")
    parser.add_argument("--out", default=None, help="default: results/bench_memory.json (--store: bench_memory_store.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = Path(__file__).parent / "results"
    if args.store:
        return store_main(args, Path(args.out or results / "bench_memory_store.json"))
    args.out = args.out or str(results / "bench_memory.json")
    if args.quick:
        args.sizes, args.queries, args.embed_rows = "2000,10000", 30, 256
    sizes = sorted(int(s) for s in args.sizes.split(","))

    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_memory_"))
    root.mkdir(parents=True, exist_ok=True)
    figures: dict[str, dict] = {}

    def record(name: str, value: float, unit: str, note: str = "") -> None:
        target = TARGETS.get(name)
        passed = None
        if target is not None:
            op, bound = target
            passed = bool(value >= bound) if op == ">=" else bool(value <= bound)
        figures[name] = {
            "value": round(float(value), 4),
            "unit": unit,
            "target": None if target is None else f"{target[0]} {target[1]:g}",
            "pass": passed,
            "note": note,
        }

    vectors = Vectors(args.dim)
    qrng = np.random.default_rng(12345)
    queries = vectors.draw(args.queries, qrng)
    try:
        for n in sizes:
            name = f"rows_{n}"
            mem = open_memory(root, name, args.dim, index_type=args.index_type)
            spent = fill(mem, n, vectors, args.batch, seed=n)
            if n == sizes[-1]:
                record(
                    "append_precomputed_rows_per_s",
                    n / spent,
                    "rows/s",
                    f"{n} rows, add() batches of {args.batch}, dim {args.dim}",
                )
            mem.optimize(cleanup_older_than=0)
            table_dir = root / f"{name}.lance"
            data_bytes = live_bytes(mem, table_dir)[0]
            lat, exact_ids = time_queries(mem, queries, args.k, exact=True)
            p50, p95 = percentiles(lat)
            record(f"retrieval_bruteforce_p50_ms@{n}", p50, "ms", f"top-{args.k}, namespace prefilter (25%)")
            record(f"retrieval_bruteforce_p95_ms@{n}", p95, "ms")
            t0 = time.perf_counter()
            info = mem.create_index()
            record(f"index_build_s@{n}", time.perf_counter() - t0, "s", f"{info['type']} {info['params']}")
            lat, approx_ids = time_queries(mem, queries, args.k, exact=False)
            p50, p95 = percentiles(lat)
            record(
                f"retrieval_indexed_p50_ms@{n}",
                p50,
                "ms",
                f"top-{args.k}, {info['type']}, namespace prefilter",
            )
            record(f"retrieval_indexed_p95_ms@{n}", p95, "ms")
            lat, _ = time_queries(mem, queries, args.k, exact=True)
            record(
                f"retrieval_exact_with_scalar_indexes_p50_ms@{n}",
                percentiles(lat)[0],
                "ms",
                "exact search once the namespace bitmap index exists",
            )
            lat, _ = time_queries(mem, queries, args.k, exact=False, fields="all")
            record(f"retrieval_indexed_all_fields_p50_ms@{n}", percentiles(lat)[0], "ms", "fields='all'")
            recall = np.mean(
                [len(set(a) & set(e)) / max(1, len(e)) for a, e in zip(approx_ids, exact_ids, strict=True)]
            )
            record(
                f"recall_at_k@{n}", recall, "fraction", f"recall@{args.k} of the index against brute force"
            )
            mem.optimize(cleanup_older_than=0)
            data_bytes, index_bytes = live_bytes(mem, table_dir)
            total_bytes = data_bytes + index_bytes
            per_100k = 100_000 / n
            record(
                f"disk_mb_per_100k_rows@{n}", data_bytes * per_100k / 1e6, "MB", "compacted, no old versions"
            )
            record(
                f"disk_mb_per_100k_rows_with_indexes@{n}",
                total_bytes * per_100k / 1e6,
                "MB",
                "vector index + scalar indexes",
            )
            record(
                f"bytes_per_row@{n}",
                data_bytes / n,
                "B",
                f"dim {args.dim} float32 = {4 * args.dim} B of vector",
            )
            if n != sizes[-1]:
                shutil.rmtree(table_dir, ignore_errors=True)
        if args.embed_rows:
            for key, value in bench_embedding(root, args.embed_rows, min(args.batch, 256)).items():
                unit = "rows/s" if key.endswith("rows_per_s") else ("ms" if key.endswith("_ms") else "s")
                record(key, value, unit, "packaged all-MiniLM-L6-v2 on CPU")
        mem = open_memory(root, "single_steps", args.dim)
        lat = []
        rng = np.random.default_rng(3)
        for i in range(50):
            vec = vectors.draw(1, rng)[0]
            t0 = time.perf_counter()
            mem.log_step("ep", "action", f"step {i}", vector=vec)
            lat.append(time.perf_counter() - t0)
        record("log_step_precomputed_p50_ms", percentiles(lat)[0], "ms", "one commit per step")
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)

    result = {
        "benchmark": "bench_memory",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {
            "sizes": sizes,
            "dim": args.dim,
            "k": args.k,
            "queries": args.queries,
            "batch": args.batch,
            "index_type": args.index_type,
            "namespaces": NAMESPACES,
            "clusters": CLUSTERS,
            "embed_rows": args.embed_rows,
            "quick": args.quick,
        },
        "figures": figures,
        "all_targets_pass": all(f["pass"] for f in figures.values() if f["pass"] is not None)
        and all(name in figures for name in TARGETS),
    }
    write_and_print(result, Path(args.out))
    return 0


def machine_info() -> dict[str, object]:
    import lancedb
    import pyarrow

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "lancedb": lancedb.__version__,
        "pyarrow": pyarrow.__version__,
        "numpy": np.__version__,
    }


def write_and_print(result: dict, out: Path) -> None:
    figures = result["figures"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in figures)
    lines = [f"{'figure':<{width}}  {'value':>12}  {'unit':<8}  {'target':<10}  pass"]
    for key, fig in figures.items():
        status = "" if fig["pass"] is None else ("PASS" if fig["pass"] else "FAIL")
        lines.append(
            f"{key:<{width}}  {fig['value']:>12.4g}  {fig['unit']:<8}  {fig['target'] or '':<10}  {status}"
        )
    sys.stdout.write("\n".join(lines) + f"\n\nwrote {out}\n")


# ------------------------------------------------------------------------------ the LangGraph store

STORE_USERS = 4
STORE_TAGS = 8
STORE_QUERIES = 30


class LookupEmbeddings:
    """Texts -> precomputed vectors (the same function for both stores: no embedder in the figures)."""

    def __init__(self) -> None:
        self.vectors: dict[str, list[float]] = {}

    def add(self, texts: list[str], vectors: np.ndarray) -> None:
        self.vectors.update(zip(texts, vectors.tolist(), strict=True))

    def __call__(self, texts) -> list[list[float]]:
        return [self.vectors[t] for t in texts]


def store_items(n: int, rng: np.random.Generator, start: int = 0) -> list[tuple[tuple[str, ...], str, dict]]:
    words = np.array(WORDS)
    picks = rng.integers(0, len(words), (n, 12))
    return [
        (("memories", f"user-{j % STORE_USERS}"), f"item-{j}",
         {"text": f"memory {j}: " + " ".join(words[picks[i]]), "tag": f"t{j % STORE_TAGS}", "score": j % 100})
        for i, j in enumerate(range(start, start + n))
    ]


def timed(fn, repeats: int) -> list[float]:
    out = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    return out


def bench_one_store(name: str, store, items, lookup: LookupEmbeddings, vectors: Vectors, n: int,
                    batch: int, record) -> list[list[tuple]]:
    """Load `items`, then time puts, gets, searches and listings; return the semantic queries' top-10s."""
    from langgraph.store.base import PutOp

    t0 = time.perf_counter()
    for start in range(0, n, batch):
        store.batch([PutOp(ns, key, value) for ns, key, value in items[start : start + batch]])
    if hasattr(store, "optimize"):
        store.optimize()  # compaction and the id/namespace indexes (also automatic every 200 writes)
    record(f"{name}_load_items_per_s@{n}", n / (time.perf_counter() - t0), "items/s",
           f"batch() of {batch} puts each" + (", then optimize()" if hasattr(store, "optimize") else ""))
    rng = np.random.default_rng(n + 1)
    fresh = store_items(50, rng, start=n)
    lookup.add([v["text"] for _, _, v in fresh], vectors.draw(50, rng))
    lat = timed(lambda i: store.put(*fresh[i]), 50)
    record(f"{name}_put_new_p50_ms@{n}", percentiles(lat)[0], "ms", "one put of a new key")
    overwrite = [items[int(j)] for j in rng.integers(0, n, 50)]
    lat = timed(lambda i: store.put(overwrite[i][0], overwrite[i][1], {**overwrite[i][2], "score": -1}), 50)
    p50, p95 = percentiles(lat)
    record(f"{name}_put_overwrite_p50_ms@{n}", p50, "ms", "one put over an existing key")
    record(f"{name}_put_overwrite_p95_ms@{n}", p95, "ms")
    lat = timed(lambda i: store.get(overwrite[i][0], overwrite[i][1]), 50)
    record(f"{name}_get_p50_ms@{n}", percentiles(lat)[0], "ms")
    prefix = ("memories", "user-1")
    queries = [f"query {i}" for i in range(STORE_QUERIES)]
    lookup.add(queries, vectors.draw(STORE_QUERIES, np.random.default_rng(99)))
    results = []
    lat = timed(lambda i: results.append(store.search(prefix, query=queries[i], limit=10)), STORE_QUERIES)
    p50, p95 = percentiles(lat)
    record(f"{name}_search_query_p50_ms@{n}", p50, "ms", "semantic top-10 within one user's 25% of items")
    record(f"{name}_search_query_p95_ms@{n}", p95, "ms")
    lat = timed(lambda i: store.search(prefix, query=queries[i], filter={"tag": "t1", "score": {"$gte": 50}},
                                       limit=10), STORE_QUERIES)
    record(f"{name}_search_query_filter_p50_ms@{n}", percentiles(lat)[0], "ms", "semantic top-10 + value filter")
    lat = timed(lambda i: store.search(prefix, filter={"tag": f"t{i % STORE_TAGS}"}, limit=10), STORE_QUERIES)
    record(f"{name}_search_filter_p50_ms@{n}", percentiles(lat)[0], "ms", "filter only, newest first")
    lat = timed(lambda i: store.search(prefix, limit=10, offset=10 * (i % 5)), STORE_QUERIES)
    record(f"{name}_search_plain_p50_ms@{n}", percentiles(lat)[0], "ms", "no query, no filter, paged")
    lat = timed(lambda i: store.list_namespaces(prefix=("memories",)), 10)
    record(f"{name}_list_namespaces_p50_ms@{n}", percentiles(lat)[0], "ms")
    return [[(r.namespace, r.key) for r in page] for page in results]


def store_main(args: argparse.Namespace, out: Path) -> int:
    from langchain_hullft import LanceDBStore
    from langgraph.store.memory import InMemoryStore

    sizes = sorted(int(s) for s in args.store_sizes.split(","))
    figures: dict[str, dict] = {}

    def record(name: str, value: float, unit: str, note: str = "") -> None:
        figures[name] = {"value": round(float(value), 4), "unit": unit, "target": None, "pass": None, "note": note}

    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_store_"))
    vectors = Vectors(args.dim)
    try:
        for n in sizes:
            rng = np.random.default_rng(n)
            items = store_items(n, rng)
            lookup = LookupEmbeddings()
            lookup.add([v["text"] for _, _, v in items], vectors.draw(n, rng))
            index = {"dims": args.dim, "embed": lookup, "fields": ["text"]}
            ours = LanceDBStore(root / f"store_{n}", namespace="bench", index=index)
            ranked_ours = bench_one_store("lancedb", ours, items, lookup, vectors, n, args.batch, record)
            ranked_ref = bench_one_store("inmemory", InMemoryStore(index=index), items, lookup, vectors, n,
                                         args.batch, record)
            same = np.mean([a == b for a, b in zip(ranked_ours, ranked_ref, strict=True)])
            record(f"same_top10_as_inmemory@{n}", same, "fraction", "semantic queries with identical top-10 lists")
            shutil.rmtree(root / f"store_{n}", ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    result = {
        "benchmark": "bench_memory --store",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {"sizes": sizes, "dim": args.dim, "batch": args.batch, "users": STORE_USERS,
                     "queries": STORE_QUERIES},
        "figures": figures,
    }
    write_and_print(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
