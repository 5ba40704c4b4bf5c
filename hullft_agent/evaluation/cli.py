"""`hullft-agent eval ...` and `hullft-agent minipile ...`: compare methods by BPB, write a report.

The main CLI calls `add_eval_commands(subparsers)`; each command sets `func(args) -> int` (0 ok, 1 a Ray
worker failed, 2 a user error, 130 interrupted). Both print the markdown table and leave in `--out`:
results.jsonl (one line per finished unit, method and N), run.json, summary.json, summary.md and two PNG
plots. An interrupted run keeps every finished line: rerun the same command with `--resume` to finish it.
`eval --ray ADDRESS` shards the units over Ray workers (`evaluation.distributed`), same outputs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from functools import partial
from typing import Any

from hullft_agent.config import PACKAGED_LLM, FinetuneConfig
from hullft_agent.errors import InvalidArgumentError, LeakageError, NoUnitsError, ResultLogError
from hullft_agent.evaluation.methods import METHODS, EvalConfig, check_methods

logger = logging.getLogger(__name__)

_USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    FileNotFoundError,
    NoUnitsError,
    ResultLogError,
)


def make_model(name: str) -> Any:
    """Load the LLM `name` (packaged SmolLM2 or a HF folder) as a `LoadedModel`. Tests replace this."""
    from hullft_agent.models import load_model

    return load_model(name_or_path=name)


def make_embedder(name: str | None) -> Any:
    """Load the sentence embedder `name` (None: the packaged default). Tests replace this."""
    from hullft_agent.config import EmbedderConfig
    from hullft_agent.embedding import Embedder

    return Embedder(EmbedderConfig() if name is None else EmbedderConfig(model=name))


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _ray_errors() -> tuple[type[BaseException], ...]:
    from hullft_agent.errors import RayUnavailableError, RayWorkerError

    return (RayUnavailableError, RayWorkerError)


def _guard(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except LeakageError as exc:
            sys.stderr.write(f"error: leakage guard: {exc}\n")
            return 2
        except _ray_errors() as exc:
            from hullft_agent.errors import RayWorkerError

            sys.stderr.write(f"error: {exc}\n")
            if isinstance(exc, RayWorkerError):
                sys.stderr.write(f"finished results are kept in {args.out}/results.jsonl; fix the cause and "
                                 "rerun the same command with --resume\n")
                return 1
            return 2
        except _USER_ERRORS as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 2
        except KeyboardInterrupt:
            sys.stderr.write(
                f"interrupted: every finished (unit, method, N) is kept in {args.out}/results.jsonl; "
                "rerun the same command with --resume to finish\n"
            )
            return 130

    run.__name__ = func.__name__
    run.__doc__ = func.__doc__
    return run


def _eval_config(args: argparse.Namespace) -> EvalConfig:
    finetune = FinetuneConfig()
    updates: dict[str, Any] = {}
    if args.lr is not None:
        updates["lr"] = args.lr
    if args.max_length is not None:
        updates["max_length"] = args.max_length
    return EvalConfig(
        methods=check_methods(args.methods),
        n=args.n,
        k=args.k,
        mode=args.mode,
        protocol=args.protocol,
        exclude_task=args.exclude_task,
        finetune=finetune.model_copy(update=updates) if updates else finetune,
        bootstrap=args.bootstrap,
        seed=args.seed,
    )


def _memory_config(args: argparse.Namespace) -> Any:
    from hullft_agent.memory import MemoryConfig

    options: dict[str, str] = {}
    for item in args.storage_option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgumentError(f"--storage-option takes KEY=VALUE, got {item!r}")
        options[key] = value
    values: dict[str, Any] = {"uri": args.memory, "table": args.table}
    if options:
        values["storage_options"] = options
    if args.namespace is not None:
        values["namespace"] = args.namespace
    return MemoryConfig(**values)


def _open_memory(args: argparse.Namespace, *, embedder: bool = True) -> Any:
    """The memory to evaluate; `embedder=False` loads no embedder (a Ray driver only reads the units).

    A memory that does not exist is an error, and nothing is created where it was looked for.
    """
    from hullft_agent.errors import MemoryNotFoundError
    from hullft_agent.memory import TrajectoryMemory

    config = _memory_config(args)
    try:
        memory = TrajectoryMemory(config)  # no embedder: never creates a table (or a folder)
    except MemoryNotFoundError as exc:
        raise MemoryNotFoundError(f"no trajectory memory to evaluate: {exc}") from None
    if not embedder:
        return memory
    return TrajectoryMemory(config, embedder=make_embedder(args.embedder or memory.embedder_name), create=False)


def _finish(result: Any) -> int:
    _out(result.markdown)
    _out(f"results: {result.out_dir}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    """BPB of held-out logged episodes under each method and N."""
    from hullft_agent.evaluation.units import episode_units

    config = _eval_config(args)  # bad methods/N fail before anything loads
    on_ray = args.ray is not None
    memory = _open_memory(args, embedder=not on_ray)
    units = episode_units(
        memory,
        split=args.split,
        task=args.task,
        episodes=args.episodes,
        split_key=args.split_key,
        unit_size=args.unit_size,
        query=args.query,
        context_steps=args.context_steps,
        max_units=args.max_units,
    )
    _out(f"eval: {len(units)} unit(s) from {memory.uri} (namespace {memory.namespace!r}); "
         f"methods {', '.join(config.methods)}; N {config.n}; K {config.k}; {config.mode}; {config.protocol}"
         + (f"; Ray {args.ray}" if on_ray else ""))
    common: dict[str, Any] = {
        "out_dir": args.out, "config": config, "namespace": memory.namespace, "resume": args.resume,
        "overwrite": args.overwrite, "progress": not args.no_progress, "plots": not args.no_plots,
        "title": "Episode BPB",
        "metadata": {"memory": memory.uri, "table": memory.table_name, "namespace": memory.namespace,
                     "split": args.split, "task": args.task, "episodes": args.episodes,
                     "unit_size": args.unit_size, "query": args.query},
    }
    if on_ray:
        from hullft_agent.evaluation.distributed import MemorySource, run_evaluation_ray

        # the workers load these themselves: factories travel, loaded models and DB handles do not
        result = run_evaluation_ray(
            units, model=partial(make_model, args.model),
            embedder=partial(make_embedder, args.embedder or memory.embedder_name),
            source=MemorySource.of(memory), ray_address=args.ray, workers=args.ray_workers,
            num_cpus=args.ray_cpus, **common,
        )
    else:
        from hullft_agent.evaluation.runner import run_evaluation

        model = make_model(args.model)
        result = run_evaluation(units, model, embedder=memory.embedder, source=memory, **common)
    return _finish(result)


def _cmd_minipile(args: argparse.Namespace) -> int:
    """BPB of held-out mini-Pile sequences, the rest of each domain being the memory."""
    from hullft_agent.evaluation.minipile import build_minipile, run_minipile

    config = _eval_config(args)
    pile = build_minipile(
        args.domains, train_per_domain=args.train_per_domain, test_per_domain=args.test_per_domain,
        seq_chars=args.seq_chars, seed=args.split_seed,
    )
    for domain, reason in pile.skipped.items():
        sys.stderr.write(f"warning: domain {domain} skipped: {reason}\n")
    _out(f"minipile: {len(pile.train)} memory sequences, {len(pile.test)} test sequences "
         f"({', '.join(pile.domains)}); methods {', '.join(config.methods)}; N {config.n}")
    embedder = make_embedder(args.embedder)
    model = make_model(args.model)
    result = run_minipile(
        pile, model, embedder=embedder, out_dir=args.out, config=config, resume=args.resume,
        overwrite=args.overwrite, progress=not args.no_progress, plots=not args.no_plots,
    )
    return _finish(result)


def _common(parser: argparse.ArgumentParser) -> None:
    defaults = EvalConfig()
    parser.add_argument("--methods", nargs="+", default=list(METHODS), metavar="METHOD",
                        help=f"methods to compare (default all): {', '.join(METHODS)}")
    parser.add_argument("--n", nargs="+", type=int, default=defaults.n, help="multiset sizes N (default 5 20)")
    parser.add_argument("--k", type=int, default=defaults.k, help="candidate pool size (default 200)")
    parser.add_argument("--mode", choices=["per_query", "per_task"], default="per_query",
                        help="per_query: every unit starts from the base model; per_task: one adapter per task "
                        "accumulates over its units")
    parser.add_argument("--protocol", choices=["lora", "reference"], default="lora",
                        help="lora (ours) or reference (published: full finetuning, lr 5e-5, padded to 1024)")
    parser.add_argument("--exclude-task", action="store_true",
                        help="also keep each unit's own task (domain) out of its candidates")
    parser.add_argument("--model", default=PACKAGED_LLM, help="LLM name or HF folder (default packaged SmolLM2)")
    parser.add_argument("--lr", type=float, default=None, help="LoRA learning rate (default 1e-3)")
    parser.add_argument("--max-length", type=int, default=None, help="training sequence length cap (default 256)")
    parser.add_argument("--bootstrap", type=int, default=defaults.bootstrap, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run's files in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-plots", action="store_true", help="no PNG plots")


def add_eval_commands(subparsers: Any) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """Add `eval` and `minipile` to the main CLI's subparsers; return both parsers."""
    from hullft_agent.evaluation.minipile import DOMAINS
    from hullft_agent.memory.config import default_memory_uri

    p = subparsers.add_parser("eval", help="BPB of held-out logged episodes under each method and N")
    p.add_argument("--memory", default=default_memory_uri(),
                   help="memory URI (default $HULLFT_MEMORY_URI or ./hullft_memory)")
    p.add_argument("--table", default="trajectories")
    p.add_argument("--namespace", default=None)
    p.add_argument("--storage-option", action="append", metavar="KEY=VALUE", help="object-store option, repeatable")
    p.add_argument("--embedder", default=None, help="embedder (default: the one the table was written with)")
    p.add_argument("--split", default=None, help="held-out episodes: metadata split value, e.g. test")
    p.add_argument("--split-key", default="split", help="episode metadata key of the split (default split)")
    p.add_argument("--task", default=None, help="held-out episodes: this task")
    p.add_argument("--episodes", nargs="+", default=None, metavar="ID", help="held-out episodes by id")
    p.add_argument("--unit-size", type=int, default=4, help="steps per scored unit (default 4)")
    p.add_argument("--query", choices=["unit", "context"], default="unit",
                   help="unit: adapt to the unit's text; context: only to the steps before it")
    p.add_argument("--context-steps", type=int, default=None, help="steps of context for --query context")
    p.add_argument("--max-units", type=int, default=None, help="evaluate only the first M units")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="shard the units over Ray workers: auto (a running cluster), local (a new one here), "
                   "HOST:PORT or ray://HOST:PORT; needs pip install \"hullft-agent[ray]\"")
    p.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="Ray workers (default: as many as the cluster's free CPUs, or GPUs, allow)")
    p.add_argument("--ray-cpus", type=float, default=1, metavar="C",
                   help="CPUs per Ray worker (default 1; a worker gets one GPU when the cluster has GPUs)")
    _common(p)
    p.set_defaults(func=_guard(_cmd_eval))
    eval_parser = p

    p = subparsers.add_parser("minipile", help="BPB on held-out sequences of several real text domains")
    p.add_argument("--domains", nargs="+", default=list(DOMAINS), metavar="DOMAIN",
                   help=f"domains (default all): {', '.join(DOMAINS)}")
    p.add_argument("--train-per-domain", type=int, default=200, help="memory sequences per domain (default 200)")
    p.add_argument("--test-per-domain", type=int, default=3, help="test sequences per domain (default 3)")
    p.add_argument("--seq-chars", type=int, default=1000, help="characters per sequence (default 1000)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the document split (default 0)")
    p.add_argument("--embedder", default=None, help="embedder (default the packaged all-MiniLM-L6-v2)")
    _common(p)
    p.set_defaults(func=_guard(_cmd_minipile))
    return eval_parser, p
