"""`hullft-agent memory ...`: import JSONL episodes, show stats, search, forget.

The main CLI calls `add_memory_commands(subparsers)`; each subcommand sets `func(args) -> int`.
Every subcommand takes `--uri` (default `$HULLFT_MEMORY_URI` or `./hullft_memory`), `--table`,
`--namespace` and `--embedder` (default: the embedder the table was written with, or the
packaged all-MiniLM-L6-v2 for a new table). See `hullft_agent.memory.jsonl` for the file format.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from hullft_agent.errors import HullFTError, InvalidArgumentError, MemoryNotFoundError
from hullft_agent.memory.config import MemoryConfig, default_memory_uri
from hullft_agent.memory.jsonl import add_steps, read_jsonl, rows_to_lines
from hullft_agent.memory.schema import ALL_NAMESPACES
from hullft_agent.memory.store import TrajectoryMemory
from hullft_agent.memory.writing import check_steps

logger = logging.getLogger(__name__)

_USER_ERRORS = (HullFTError, ValueError, TypeError, FileNotFoundError)


def make_embedder(model: str | None) -> Any:
    """Load the sentence embedder `model` (None: the packaged default). Tests replace this."""
    from hullft_agent.config import EmbedderConfig
    from hullft_agent.embedding import Embedder

    return Embedder(EmbedderConfig() if model is None else EmbedderConfig(model=model))


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _config(args: argparse.Namespace, **extra: Any) -> MemoryConfig:
    values: dict[str, Any] = {"uri": args.uri, "table": args.table}
    options = {}
    for item in args.storage_option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgumentError(f"--storage-option takes KEY=VALUE, got {item!r}")
        options[key] = value
    if options:
        values["storage_options"] = options
    if args.namespace is not None:
        values["namespace"] = args.namespace
    values.update({k: v for k, v in extra.items() if v is not None})
    return MemoryConfig(**values)


def _open(args: argparse.Namespace, *, embedder: bool) -> TrajectoryMemory:
    """An existing memory (a missing one is an error and nothing is created), with the embedder it
    was written with (or --embedder) when `embedder`."""
    config = _config(args)
    memory = TrajectoryMemory(config)
    if not embedder:
        return memory
    return TrajectoryMemory(
        config, embedder=make_embedder(args.embedder or memory.embedder_name), create=False
    )


def _cmd_import(args: argparse.Namespace) -> int:
    steps, lines = read_jsonl(args.file)  # a missing or malformed file fails before anything is opened
    config = _config(args, granularity=args.granularity, window=args.window, write_batch_size=args.batch_size)
    model = args.embedder
    if model is None:
        try:  # the embedder the table was written with; a new table gets the default one
            model = TrajectoryMemory(
                config.model_copy(update={"granularity": None, "window": None})
            ).embedder_name
        except MemoryNotFoundError:
            model = None
    embedder = make_embedder(model)
    with rows_to_lines(args.file, lines):  # every step is valid before a table is created
        check_steps(steps, dim=int(embedder.dim), kinds=config.kinds, namespace=config.namespace)
    memory = TrajectoryMemory(config, embedder=embedder)
    summary = add_steps(
        memory, args.file, steps, lines, namespace=args.namespace, progress=not args.no_progress
    )
    _out(
        f"imported {summary['rows']} rows ({summary['episodes']} episodes, {summary['lines']} lines) "
        f"into {memory.uri}/{memory.table_name} (version {memory.version})"
    )
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    memory = _open(args, embedder=False)
    stats = memory.stats(args.namespace if args.namespace is not None else ALL_NAMESPACES)
    if args.json:
        _out(json.dumps(stats, indent=2, default=str))
        return 0
    _out(f"memory     {stats['uri']}/{stats['table']} (version {stats['version']})")
    _out(f"embedder   {stats['embedder']} (dim {stats['dim']}), granularity {stats['granularity']}")
    _out(f"rows       {stats['rows']} in namespace {stats['namespace']!r} ({stats['total_rows']} in all)")
    _out(f"episodes   {stats['episodes']}")
    _out(f"text       {stats['text_bytes']} bytes; on disk {stats['disk_bytes']} bytes")
    _out("namespaces " + (", ".join(f"{k}={v}" for k, v in stats["namespaces"].items()) or "-"))
    _out("kinds      " + (", ".join(f"{k}={v}" for k, v in stats["kinds"].items()) or "-"))
    _out(f"index      {stats['index'] or 'none (exact search)'}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    memory = _open(args, embedder=True)
    pool = memory.candidates(
        context=args.text,
        k=args.k,
        task=args.task,
        exclude_episode=args.exclude_episode,
        where=args.where,
        fields="all",
    )
    if args.json:
        rows = [
            {"id": i, "similarity": float(s), "text": t, **{k: v for k, v in m.items() if k != "id"}}
            for i, s, t, m in zip(pool.ids, pool.similarities, pool.texts, pool.metadata, strict=True)
        ]
        _out(json.dumps(rows, indent=2, default=str))
        return 0
    if not len(pool):
        _out(f"no rows in namespace {memory.namespace!r}")
        return 0
    for rank, (sim, text, meta) in enumerate(
        zip(pool.similarities, pool.texts, pool.metadata, strict=True), 1
    ):
        snippet = " ".join(text.split())
        snippet = snippet if len(snippet) <= 100 else snippet[:97] + "..."
        _out(f"{rank:3d}. {sim:.3f}  {meta['episode_id']}#{meta['step']} [{meta['kind']}] {snippet}")
    return 0


def _cmd_forget(args: argparse.Namespace) -> int:
    if not (args.id or args.episode or args.task or args.all):
        raise InvalidArgumentError("say what to forget: --id, --episode, --task, or --all (a whole namespace)")
    if args.all and (args.id or args.episode or args.task):
        raise InvalidArgumentError("--all deletes a whole namespace; do not combine it with --id/--episode/--task")
    if args.all and (args.namespace is None or not args.yes):
        raise InvalidArgumentError("--all needs an explicit --namespace and --yes")
    memory = _open(args, embedder=False)
    deleted = memory.forget(
        ids=args.id or None,
        episode_id=args.episode,
        task=args.task,
        namespace=args.namespace,
    )
    _out(f"forgot {deleted} rows from namespace {args.namespace or memory.namespace!r}")
    return 0


def _guard(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except _USER_ERRORS as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 2

    run.__name__ = func.__name__
    run.__doc__ = func.__doc__
    return run


def add_memory_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add `memory import|stats|search|forget` to the main CLI's subparsers; return the parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--uri",
        default=default_memory_uri(),
        help="memory location: a folder, s3://bucket/prefix, db://name ... (default $HULLFT_MEMORY_URI or "
        "./hullft_memory)",
    )
    common.add_argument("--table", default="trajectories", help="table name (default trajectories)")
    common.add_argument("--namespace", default=None, help="namespace (agent/user/tenant); default 'default'")
    common.add_argument(
        "--storage-option",
        action="append",
        metavar="KEY=VALUE",
        help="object-store option, repeatable (e.g. aws_endpoint=http://127.0.0.1:9000, allow_http=true)",
    )
    common.add_argument(
        "--embedder",
        default=None,
        help="embedder model (default: the one the table was written with, else all-MiniLM-L6-v2)",
    )

    memory = subparsers.add_parser("memory", help="inspect and edit the trajectory memory")
    sub = memory.add_subparsers(dest="memory_command", metavar="{import,stats,search,forget}")
    sub.required = True

    p = sub.add_parser("import", parents=[common], help="import episodes from a JSON-lines file")
    p.add_argument("file", help="JSONL: one episode {'episode_id', 'steps': [...]} or one step per line")
    p.add_argument("--granularity", choices=["step", "window"], default=None, help="for a new table")
    p.add_argument("--window", type=int, default=None, help="steps per window (granularity window)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="rows per Arrow batch (the import is one commit)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_guard(_cmd_import))

    p = sub.add_parser("stats", parents=[common], help="what the memory holds")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_guard(_cmd_stats))

    p = sub.add_parser("search", parents=[common], help="rows nearest a text")
    p.add_argument("text")
    p.add_argument("-k", type=int, default=10, help="how many rows (default 10)")
    p.add_argument("--task", default=None)
    p.add_argument("--exclude-episode", default=None)
    p.add_argument("--where", default=None, help="extra SQL filter, e.g. \"kind = 'action'\"")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_guard(_cmd_search))

    p = sub.add_parser("forget", parents=[common], help="delete rows by id, episode, task or namespace")
    p.add_argument("--id", action="append", default=[], help="row id (repeatable)")
    p.add_argument("--episode", default=None, help="every row of this episode")
    p.add_argument("--task", default=None, help="every row of this task")
    p.add_argument("--all", action="store_true", help="every row of --namespace (needs --yes)")
    p.add_argument("--yes", action="store_true", help="confirm --all")
    p.set_defaults(func=_guard(_cmd_forget))
    return memory
