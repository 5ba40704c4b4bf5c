"""Serving under load: `hullft-agent serve`'s app on 127.0.0.1 against concurrent sessions.

    python benchmarks/bench_serve.py [--clients 1 4 16 64] [--requests 2] [--max-tokens 16] [--n 4]
                                     [--level-seconds 120] [--threads N] [--tiny]

The packaged SmolLM2-135M (or, with --tiny, a tiny random model for a quick check) over a fresh memory
of agent-like rows, two API keys (two tenants). For each level of C concurrent sessions (half per
tenant) and each adaptation setting (off, per_task on), every session sends `--requests` chat
completions one after another with an asyncio HTTP client; a 429 is retried after its Retry-After,
as the OpenAI SDK does. Reported: throughput, latency p50/p95/p99, queue wait, 429s, errors.
Then:
 - overhead at one client: the same requests alternately in-process (`Runtime.generate`) and through
   HTTP, mean latency ratio − 1 (target ≤ 5%);
 - the memory: every answered exchange's logged rows are found, in the caller's namespace only.
Writes benchmarks/results/bench_serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "server"))

from hullft_server import ServerConfig, create_app  # noqa: E402
from hullft_server.protocol import ChatCompletionRequest, build_call  # noqa: E402
from hullft_server.run import serve_in_thread  # noqa: E402

from hullft_agent.adapter import TestTimeAdapter  # noqa: E402
from hullft_agent.config import AdapterConfig, FinetuneConfig, ModelConfig, SelectionConfig  # noqa: E402
from hullft_agent.memory import TrajectoryMemory  # noqa: E402
from hullft_agent.runtime import Runtime  # noqa: E402

KEYS = {"bench-key-tenant-a": "tenant-a", "bench-key-tenant-b": "tenant-b"}
ROOMS = ["kitchen", "pantry", "garden", "corridor", "bedroom", "cellar", "living room", "shed"]
THINGS = ["red potato", "yellow pepper", "knife", "cookbook", "carrot", "fridge", "oven", "stove", "salt"]
SYSTEM = "You play a text game. Answer with one command."


def seed_memory(memory: TrajectoryMemory) -> None:
    """A few hundred agent-like rows per tenant: observations and the commands taken."""
    for namespace in KEYS.values():
        for e in range(24):
            steps = []
            for s in range(6):
                room, thing = ROOMS[(e + s) % len(ROOMS)], THINGS[(e * 3 + s) % len(THINGS)]
                steps.append(("observation", f"You are in the {room}. You see a {thing} here."))
                steps.append(("action", f"take {thing}" if s % 2 else f"go to the {ROOMS[(e + s + 1) % len(ROOMS)]}"))
            memory.log_episode(f"history-{e}", steps, namespace=namespace, task=f"game-{e % 4}")


def prompt(session: int, turn: int) -> list[dict[str, str]]:
    room, thing = ROOMS[(session + turn) % len(ROOMS)], THINGS[(session * 5 + turn) % len(THINGS)]
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"You are in the {room}. You see a {thing} here. What do you do?"}]


def body(model: str, session: int, turn: int, max_tokens: int, adapt: bool) -> dict[str, Any]:
    return {"model": model, "messages": prompt(session, turn), "max_tokens": max_tokens, "temperature": 0,
            "seed": turn, "user": f"s{session}", "hullft": {"adapt": adapt}}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def session_loop(client: httpx.AsyncClient, url: str, key: str, session: int, requests: int, stats: dict,
                       model: str, max_tokens: int, adapt: bool, deadline: float) -> None:
    for turn in range(requests):
        payload = body(model, session, turn, max_tokens, adapt)
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            response = await client.post(url, json=payload, headers={"Authorization": f"Bearer {key}"})
            if response.status_code == 429:
                stats["rejected"] += 1
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                continue
            if response.status_code != 200:
                stats["errors"].append(f"{response.status_code}: {response.text[:200]}")
                break
            data = response.json()
            stats["latency"].append(time.perf_counter() - t0)
            stats["queue"].append(data["hullft"]["timings"]["queue"])
            stats["answered"].append({"namespace": KEYS[key], "session": f"s{session}",
                                      "logged_ids": data["hullft"]["logged_ids"]})
            break


async def run_level(url: str, clients: int, requests: int, model: str, max_tokens: int, adapt: bool,
                    seconds: float, offset: int) -> dict[str, Any]:
    stats: dict[str, Any] = {"latency": [], "queue": [], "rejected": 0, "errors": [], "answered": []}
    keys = list(KEYS)
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(session_loop(client, url, keys[i % 2], offset + i, requests, stats, model, max_tokens,
                                            adapt, deadline) for i in range(clients)))
        wall = time.perf_counter() - t0
    done = len(stats["latency"])
    return {
        "clients": clients, "adapt": adapt, "requests": done, "wall_s": wall, "throughput_rps": done / wall,
        "p50_s": percentile(stats["latency"], 50), "p95_s": percentile(stats["latency"], 95),
        "p99_s": percentile(stats["latency"], 99), "queue_p50_s": percentile(stats["queue"], 50),
        "queue_p95_s": percentile(stats["queue"], 95), "rejected_429": stats["rejected"],
        "errors": len(stats["errors"]), "error_samples": stats["errors"][:3],
        "unfinished_sessions": clients * requests - done - len(stats["errors"]), "answered": stats["answered"],
    }


def overhead(runtime: Runtime, url: str, model: str, config: ServerConfig, repeats: int, max_tokens: int,
             adapt: bool) -> dict[str, Any]:
    """The same requests alternately in-process and over HTTP, one at a time."""
    key = next(iter(KEYS))
    local, remote = [], []
    with httpx.Client(timeout=600) as client:
        for i in range(repeats + 1):  # the first pair warms both paths up
            payload = body(model, 9000, i, max_tokens, adapt)
            call = build_call(ChatCompletionRequest.model_validate(payload), namespace=KEYS[key],
                              session=f"overhead-local-{adapt}", default_max_tokens=config.default_max_tokens,
                              time_limit=None)
            t0 = time.perf_counter()
            runtime.generate(call)
            t_local = time.perf_counter() - t0
            payload["user"] = f"overhead-http-{adapt}"
            t0 = time.perf_counter()
            response = client.post(url, json=payload, headers={"Authorization": f"Bearer {key}"})
            t_remote = time.perf_counter() - t0
            response.raise_for_status()
            if i:
                local.append(t_local)
                remote.append(t_remote)
    ratios = [r / lo for r, lo in zip(remote, local, strict=True)]
    return {"adapt": adapt, "pairs": repeats, "in_process_mean_s": statistics.mean(local),
            "http_mean_s": statistics.mean(remote), "overhead": statistics.mean(remote) / statistics.mean(local) - 1,
            "overhead_median_pair": statistics.median(ratios) - 1}


def check_memory(memory: TrajectoryMemory, answered: list[dict[str, Any]]) -> dict[str, Any]:
    ids = [i for a in answered for i in a["logged_ids"]]
    rows = {r["id"]: r for r in memory.get(ids, namespace="*")}
    missing = [i for i in ids if i not in rows]
    wrong = [a for a in answered for i in a["logged_ids"]
             if i in rows and (rows[i]["namespace"] != a["namespace"] or rows[i]["episode_id"] != a["session"])]
    exchanges_without_rows = sum(1 for a in answered if not a["logged_ids"])
    return {"exchanges": len(answered), "logged_rows": len(ids), "missing_rows": len(missing),
            "cross_namespace_or_session": len(wrong), "exchanges_without_rows": exchanges_without_rows}


def build(args: argparse.Namespace, memory: TrajectoryMemory) -> Runtime:
    config = AdapterConfig(selection=SelectionConfig(n=args.n, k=64), mode="per_task",
                           finetune=FinetuneConfig(max_length=128))
    if args.tiny:
        from conftest import build_tiny_tokenizer
        from live_server import tiny_runtime

        return tiny_runtime(build_tiny_tokenizer(), memory)
    from hullft_agent.models import load_model

    model = load_model(ModelConfig())
    adapter = TestTimeAdapter(model, embedder=memory.embedder, source=memory, config=config)
    return Runtime(adapter=adapter, memory=memory, log_source="bench_serve")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=2, help="requests per session per level")
    parser.add_argument("--max-tokens", type=int, default=16, dest="max_tokens")
    parser.add_argument("--n", type=int, default=4, help="N, multiset size of each adaptation")
    parser.add_argument("--max-queue", type=int, default=16, dest="max_queue")
    parser.add_argument("--level-seconds", type=float, default=120.0, dest="level_seconds",
                        help="stop sending new requests of a level after this long")
    parser.add_argument("--overhead-pairs", type=int, default=16, dest="overhead_pairs")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (a quick check of the harness)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_serve.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        from hullft_agent.memory.testing import HashingEmbedder

        embedder: Any = HashingEmbedder(32)
    else:
        from hullft_agent.embedding import Embedder

        embedder = Embedder()
    with tempfile.TemporaryDirectory() as tmp:
        memory = TrajectoryMemory.open(Path(tmp) / "memory", embedder=embedder)
        seed_memory(memory)
        runtime = build(args, memory)
        config = ServerConfig(api_keys=KEYS, max_queue=args.max_queue, default_max_tokens=args.max_tokens)
        server, thread, base = serve_in_thread(create_app(runtime, config))
        url = base + "/v1/chat/completions"
        try:
            levels, answered, offset = [], [], 0
            for adapt in (False, True):
                for clients in args.clients:
                    level = asyncio.run(run_level(url, clients, args.requests, runtime.name, args.max_tokens, adapt,
                                                  args.level_seconds, offset))
                    offset += clients
                    answered += level.pop("answered")
                    levels.append(level)
                    print(f"  clients {clients:>3} adapt {'on ' if adapt else 'off'}: {level['requests']} answered, "
                          f"{level['throughput_rps']:.2f} req/s, p50 {level['p50_s']:.2f} s, "
                          f"429s {level['rejected_429']}, errors {level['errors']}", flush=True)
            overheads = [overhead(runtime, url, runtime.name, config, args.overhead_pairs, args.max_tokens, adapt)
                         for adapt in (False, True)]
            memory_check = check_memory(memory, answered)
        finally:
            server.should_exit = True
            thread.join(60)
    print()
    print("| clients | adapt | answered | req/s | p50 s | p95 s | p99 s | queue p50 s | queue p95 s | 429s | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for lv in levels:
        print(f"| {lv['clients']} | {'per_task' if lv['adapt'] else 'off'} | {lv['requests']} | "
              f"{lv['throughput_rps']:.2f} | {lv['p50_s']:.2f} | {lv['p95_s']:.2f} | {lv['p99_s']:.2f} | "
              f"{lv['queue_p50_s']:.2f} | {lv['queue_p95_s']:.2f} | {lv['rejected_429']} | {lv['errors']} |")
    print()
    for o in overheads:
        print(f"overhead at one client, adapt {'per_task' if o['adapt'] else 'off'}: in-process "
              f"{o['in_process_mean_s']:.3f} s, HTTP {o['http_mean_s']:.3f} s → {100 * o['overhead']:+.1f}% "
              f"(median of the per-pair ratios {100 * o['overhead_median_pair']:+.1f}%; {o['pairs']} pairs; "
              "target ≤ 5%)")
    print(f"memory: {memory_check}")
    out = {
        "benchmark": "bench_serve", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv), "model": runtime.name, "threads": torch.get_num_threads(),
        "machine": platform.platform(), "settings": vars(args), "levels": levels, "overhead": overheads,
        "memory": memory_check,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
