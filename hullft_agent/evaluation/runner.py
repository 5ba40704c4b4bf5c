"""Run a method comparison: for every unit, method and N, adapt, score the unit's BPB, log the numbers.

Methods (`METHODS`): `base` (no adaptation), `knn`, `sift` (plain training, r = 1), `hullft` (Frank-Wolfe
+ geometric integerization + gradient reuse r = 2) and `hullft-noreuse` (the same multiset, r = 1).
`per_query` mode restarts every unit from the base model; `per_task` keeps one adapter per task (and
per method and N) that accumulates over the units of the task in order. The `reference` protocol is
the published one: full finetuning, Adam lr 5e-5, sequences padded to 1024 tokens (or the model's
context if shorter); it trains every weight of the model it is given, so give it its own copy.

Candidates for a unit never come from the unit's own episode (and, with `exclude_task`, not from its
task either); `GuardedSource` checks every pool and every selection and raises `LeakageError` if a
source ever returns such a row.

Every finished (unit, method, N) is appended to `results.jsonl` and fsynced. A rerun with `resume`
skips the finished keys (and cuts a torn last line off), and gives the same final table.
`JobRunner` computes the records and `plan_run`/`RunPlan` keep the folder; `distributed.run_evaluation_ray`
uses both, with a `JobRunner` in every Ray worker.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from hullft_agent.candidates import CandidatePool, CandidateSource, InMemoryCandidates
from hullft_agent.config import AdapterConfig, AdaptOverrides, FinetuneConfig, SelectionConfig, StrictConfig
from hullft_agent.errors import LeakageError, NoUnitsError
from hullft_agent.evaluation.report import (
    BASE,
    summarize,
    summary_markdown,
)
from hullft_agent.evaluation.results import (
    ResultLog,
    read_results,
    result_key,
    rewrite_results,
)
from hullft_agent.evaluation.units import EvalUnit, units_fingerprint
from hullft_agent.files import write_atomic, write_json_atomic

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
PLOT_N = "bpb_vs_n.png"
PLOT_TIME = "bpb_vs_time.png"
_OUTPUT_FILES = (RESULTS_FILE, RUN_FILE, SUMMARY_JSON, SUMMARY_MD, PLOT_N, PLOT_TIME)

#: Published protocol: full finetuning, Adam lr 5e-5, sequences truncated and padded to 1024 tokens.
REFERENCE_LR = 5e-5
REFERENCE_LENGTH = 1024


@dataclass(frozen=True)
class MethodSpec:
    """How a method name maps onto the adapter: selection method (None: no adaptation) and r."""

    selection: str | None
    refresh_interval: int = 1
    description: str = ""


METHODS: dict[str, MethodSpec] = {
    BASE: MethodSpec(None, 1, "no adaptation"),
    "knn": MethodSpec("knn", 1, "the N nearest candidates, plain training"),
    "sift": MethodSpec("sift", 1, "SIFT (lambda 0.2), plain training"),
    "hullft": MethodSpec("hullft", 2, "Frank-Wolfe + integerization, gradient reuse r=2"),
    "hullft-noreuse": MethodSpec("hullft", 1, "Frank-Wolfe + integerization, r=1"),
}


def check_methods(methods: Sequence[str]) -> list[str]:
    """The method names, checked: a ValueError lists the valid ones."""
    if isinstance(methods, str):
        methods = [methods]
    out = list(dict.fromkeys(methods))
    if not out:
        raise ValueError(f"no method given; valid methods: {', '.join(METHODS)}")
    unknown = [m for m in out if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; valid methods: {', '.join(METHODS)}")
    return out


class EvalConfig(StrictConfig):
    """What an evaluation compares and how. Fields that change results are part of the resume check."""

    methods: list[str] = Field(default_factory=lambda: list(METHODS))
    n: list[int] = Field(default_factory=lambda: [5, 20], description="multiset sizes N")
    k: int = Field(200, ge=1, description="candidate pool size")
    mode: Literal["per_query", "per_task"] = "per_query"
    protocol: Literal["lora", "reference"] = "lora"
    exclude_task: bool = Field(False, description="also keep the unit's own task out of its candidates")
    finetune: FinetuneConfig = Field(
        default_factory=FinetuneConfig, description="LoRA training settings (protocol 'lora')"
    )
    score_max_length: int | None = Field(None, ge=2, description="scoring window (default: model context)")
    score_batch_size: int = Field(8, ge=1)
    bootstrap: int = Field(1000, ge=1, description="bootstrap resamples of the units")
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = Field(0, description="bootstrap seed")

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        return check_methods(value)

    @field_validator("n")
    @classmethod
    def _ns(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("n needs at least one multiset size")
        bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int) or v < 1]
        if bad:
            raise ValueError(f"every N must be an integer >= 1, got {bad}")
        return sorted(set(value))

    def jobs_n(self, method: str) -> list[int]:
        return [0] if METHODS[method].selection is None else list(self.n)


def _episode_of(meta: dict[str, Any]) -> Any:
    for key in ("episode_id", "episode"):
        if key in meta:
            return meta[key]
    raise LeakageError(
        "the candidate source does not report each candidate's episode (metadata 'episode_id' or 'episode'), "
        "so the leakage guard cannot check it; use a TrajectoryMemory or InMemoryCandidates(episodes=...)"
    )


class GuardedSource:
    """The candidate source of an evaluation: excludes the current unit's episode (and task), checks.

    `begin(unit)` sets the unit; `candidates` then drops its episode (and with `exclude_task` its task)
    whatever the adapter asks, and raises `LeakageError` if the inner source returns such a row anyway.
    """

    def __init__(self, source: CandidateSource, *, namespace: str | None = None, exclude_task: bool = False) -> None:
        if not isinstance(source, CandidateSource):
            raise TypeError(f"source must implement CandidateSource.candidates(...), got {type(source).__name__}")
        self.source = source
        self.namespace = namespace
        self.exclude_task = exclude_task
        self.unit: EvalUnit | None = None
        self.last_pool: CandidatePool | None = None
        from hullft_agent.memory.store import TrajectoryMemory

        self._is_memory = isinstance(source, TrajectoryMemory)
        if exclude_task and not (self._is_memory or isinstance(source, InMemoryCandidates)):
            raise ValueError("exclude_task needs a TrajectoryMemory or an InMemoryCandidates source")

    def begin(self, unit: EvalUnit) -> None:
        self.unit = unit
        self.last_pool = None

    def candidates(
        self, vector: np.ndarray, k: int, *, task: str | None = None, exclude_episode: str | None = None
    ) -> CandidatePool:
        unit = self.unit
        if unit is None:
            raise RuntimeError("GuardedSource.candidates called before begin(unit)")
        episode = unit.episode if unit.episode is not None else exclude_episode
        drop_task = unit.task if self.exclude_task else None
        if self._is_memory:
            where = None
            if drop_task is not None:
                from lancedb.expr import col, lit

                where = f"(task IS NULL OR {(col('task') != lit(drop_task)).to_sql()})"
            pool = self.source.candidates(  # type: ignore[call-arg]
                vector, k, namespace=self.namespace, task=task, exclude_episode=episode, where=where,
                fields=["episode_id", "task"],
            )
        elif drop_task is not None and isinstance(self.source, InMemoryCandidates):
            pool = self.source.candidates(vector, k, task=task, exclude_episode=episode, exclude_task=drop_task)
        else:
            pool = self.source.candidates(vector, k, task=task, exclude_episode=episode)
        self._check_pool(pool, unit)
        self.last_pool = pool
        return pool

    def _check_pool(self, pool: CandidatePool, unit: EvalUnit) -> None:
        if len(pool) == 0 or (unit.episode is None and not (self.exclude_task and unit.task is not None)):
            return
        if len(pool.metadata) != len(pool):
            raise LeakageError("the candidate pool carries no metadata; the leakage guard cannot check it")
        for cid, meta in zip(pool.ids, pool.metadata, strict=True):
            if unit.episode is not None and _episode_of(meta) == unit.episode:
                raise LeakageError(f"candidate {cid!r} comes from the unit's own episode {unit.episode!r}")
            if self.exclude_task and unit.task is not None and meta.get("task") == unit.task:
                raise LeakageError(f"candidate {cid!r} comes from the unit's own task {unit.task!r} (exclude_task)")

    def check_selected(self, selected_ids: Sequence[str]) -> None:
        """Every selected id must come from the last (checked) pool."""
        if not selected_ids:
            return
        pool_ids = set(self.last_pool.ids) if self.last_pool is not None else set()
        stray = [i for i in selected_ids if i not in pool_ids]
        if stray:
            raise LeakageError(f"selected id(s) {stray[:5]} are not in the unit's checked candidate pool")


@dataclass
class EvalResult:
    """What a run produced: the summary (as written to summary.json) and the files."""

    summary: dict[str, Any]
    markdown: str
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return bool(self.summary.get("complete"))


# ---------------------------------------------------------------------------------------- setup


def _context_length(model: Any) -> int | None:
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 1 else None


def _finetune_config(config: EvalConfig, context: int | None) -> FinetuneConfig:
    base = config.finetune
    if config.protocol == "reference":
        length = min(REFERENCE_LENGTH, context) if context else REFERENCE_LENGTH
        return base.model_copy(update={"method": "full", "lr": REFERENCE_LR, "max_length": length, "pad_to": length})
    length = min(base.max_length, context) if context else base.max_length
    return base.model_copy(update={"method": "lora", "max_length": length})


def _has_lora_layers(model: Any) -> bool:
    named = getattr(model, "named_parameters", None)
    return named is not None and any("lora_" in name for name, _ in named())


def _model_description(model: Any) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    params = sum(int(p.numel()) for p in model.parameters()) if hasattr(model, "parameters") else None
    return {
        "class": type(model).__name__,
        "name_or_path": str(getattr(cfg, "_name_or_path", "") or ""),
        "model_type": str(getattr(cfg, "model_type", "") or ""),
        "parameters": params,
    }


def _fingerprint(config: EvalConfig, units: Sequence[EvalUnit], model: dict[str, Any], finetune: FinetuneConfig) -> dict[str, Any]:
    """Everything a finished result depends on (not the method/N lists: those may grow on resume)."""
    return {
        "units": units_fingerprint(units),
        "n_units": len(units),
        "k": config.k,
        "mode": config.mode,
        "protocol": config.protocol,
        "exclude_task": config.exclude_task,
        "finetune": finetune.model_dump(mode="json"),
        "score_max_length": config.score_max_length,
        "model": model,
    }


def check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> list[str]:
    """The earlier run's files in `out`; refuses them unless resuming or overwriting (cheap, checked early)."""
    existing = [name for name in _OUTPUT_FILES if (out / name).exists()]
    if existing and not resume and not overwrite:
        raise ValueError(
            f"{out} already holds an evaluation ({', '.join(existing)}); pass resume (--resume) to continue it, "
            "overwrite (--overwrite) to start over, or choose another output folder"
        )
    return existing


def _prepare_out_dir(out: Path, fingerprint: dict[str, Any], *, resume: bool, overwrite: bool) -> None:
    existing = check_out_dir(out, resume=resume, overwrite=overwrite)
    if overwrite and not resume:
        for name in existing:
            (out / name).unlink()
        existing = []
    run_path = out / RUN_FILE
    if resume and run_path.exists():
        previous = json.loads(run_path.read_text(encoding="utf-8")).get("fingerprint", {})
        changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
        if changed:
            raise ValueError(
                f"cannot resume {out}: the earlier run differs in {changed} (e.g. other units, K, mode, protocol, "
                "finetune settings or model); use another output folder or --overwrite"
            )
    elif resume and (out / RESULTS_FILE).exists():
        raise ValueError(f"cannot resume {out}: {RESULTS_FILE} exists but {RUN_FILE} is missing")


def check_units(units: Sequence[EvalUnit]) -> list[EvalUnit]:
    """The units as a list: at least one, ids unique (results are keyed by unit id)."""
    units = list(units)
    if not units:
        raise NoUnitsError("no units to evaluate")
    ids = [u.id for u in units]
    if len(set(ids)) != len(ids):
        raise ValueError("unit ids must be unique")
    return units


# ---------------------------------------------------------------------------------------- jobs

#: One job: (index of the unit in the run's unit list, method, N).
Job = tuple[int, str, int]


def job_weight(n: int) -> int:
    return n + 1  # about one pass per training instance, plus scoring


def task_group(unit: EvalUnit) -> str:
    """What a per_task adapter accumulates over: the unit's task, else its group."""
    return unit.task or unit.group


class JobRunner:
    """Runs jobs in this process and returns one result record per job.

    It holds the leakage guard and the adapter; `run_evaluation` drives one, and every Ray worker of
    `hullft_agent.evaluation.distributed` holds one, so a local and a distributed run compute their numbers
    with the same code. The adapter is built on the first job (LoRA's random init seeded from the finetune
    seed without touching the caller's RNG), so a refused output folder never wraps the caller's model
    and every process starts from the same adapter.
    """

    def __init__(
        self,
        units: Sequence[EvalUnit],
        model: Any = None,
        tokenizer: Any = None,
        *,
        embedder: Any,
        source: CandidateSource,
        config: EvalConfig,
        adapter: Any = None,
        namespace: str | None = None,
    ) -> None:
        from hullft_agent.adapter import TestTimeAdapter

        self.units = list(units)
        self.config = config
        self.embedder = embedder
        self.guard = GuardedSource(source, namespace=namespace, exclude_task=config.exclude_task)
        if adapter is None:
            if model is None:
                raise ValueError("pass a model (or a LoadedModel), or an existing TestTimeAdapter as adapter=")
            if tokenizer is None and hasattr(model, "tokenizer"):
                model, tokenizer = model.model, model.tokenizer
            if tokenizer is None:
                raise ValueError("pass the model's tokenizer (or a LoadedModel)")
            if _has_lora_layers(model):
                raise ValueError(
                    "the model already carries LoRA layers (a TestTimeAdapter wrapped it): pass that adapter as "
                    "adapter=, or load a separate copy of the model"
                    + (" (the reference protocol trains every weight of a plain model)"
                       if config.protocol == "reference" else "")
                )
            base_model = model
        else:
            if not isinstance(adapter, TestTimeAdapter):
                raise TypeError(f"adapter must be a TestTimeAdapter, got {type(adapter).__name__}")
            base_model = adapter.model
        self.finetune = _finetune_config(config, _context_length(base_model))
        if adapter is not None and adapter.session.method != self.finetune.method:
            raise ValueError(
                f"protocol {config.protocol!r} needs a {self.finetune.method!r} session but the adapter's is "
                f"{adapter.session.method!r}; create a separate adapter (and model copy) for it"
            )
        self.model_info = _model_description(base_model)
        self._model, self._tokenizer = base_model, tokenizer
        self._adapter = adapter
        self._open = False
        self._vectors: dict[int, np.ndarray] = {}
        self._embed_time = 0.0
        self._sequence: tuple[str, int] | None = None

    def fingerprint(self) -> dict[str, Any]:
        """What every finished result of this run depends on (compared on resume)."""
        return _fingerprint(self.config, self.units, self.model_info, self.finetune)

    def embed(self, jobs: Sequence[Job]) -> None:
        """Embed the queries of the units that `jobs` adapt to, in one batch in unit order.

        A distributed run passes every worker the run's whole job list, so each worker's query vectors are
        those of the local run, bit for bit, also with an embedder whose output depends on the batch.
        """
        need = sorted({i for i, m, _ in jobs if METHODS[m].selection is not None})
        if not need:
            return
        t0 = time.perf_counter()
        encoded = np.asarray(self.embedder.encode([self.units[i].query for i in need]), dtype=np.float32)
        self._embed_time = (time.perf_counter() - t0) / len(need)
        self._vectors = {i: encoded[j] for j, i in enumerate(need)}

    def run(self, job: Job) -> dict[str, Any]:
        """Adapt (per the job's method and N), score the unit, return its record."""
        i, method, n = job
        adapter = self._adapter_for_run()
        if self.config.mode == "per_task" and self._sequence != (method, n):
            adapter.forget_tasks()  # a new (method, N) sequence starts every task from the base model
            self._sequence = (method, n)
        return _run_job(adapter, self.guard, self.units[i], self._vectors.get(i), self._embed_time, method, n,
                        self.config, self.finetune)

    def close(self) -> None:
        """Drop the per_task adapters and return the model to its base state."""
        if not self._open:
            return
        adapter = self._adapter
        if self.config.mode == "per_task":
            adapter.forget_tasks()
        adapter.reset()
        self._open, self._sequence = False, None

    def _adapter_for_run(self) -> Any:
        if self._open:
            return self._adapter
        from hullft_agent.adapter import TestTimeAdapter

        if self._adapter is None:
            adapter_config = AdapterConfig(finetune=self.finetune, mode=self.config.mode,
                                           selection=SelectionConfig(k=self.config.k))
            # the session seeds LoRA's initialisation from finetune.seed: a resumed run in a new process, or a
            # Ray worker, continues with the same adapter
            self._adapter = TestTimeAdapter(self._model, self._tokenizer, embedder=self.embedder,
                                            source=self.guard, config=adapter_config)
        else:
            self._adapter.reset()  # a caller's adapter: every call passes the guard and the run's settings
        self._open = True
        return self._adapter


# ---------------------------------------------------------------------------------------- the run


@dataclass
class RunPlan:
    """An output folder after the resume check: the finished records and the jobs left, in run order."""

    out: Path
    config: EvalConfig
    units: list[EvalUnit]
    done: dict[tuple[str, str, int], dict[str, Any]]
    jobs: list[Job]
    total_jobs: int

    @property
    def results_path(self) -> Path:
        return self.out / RESULTS_FILE

    def key(self, job: Job) -> tuple[str, str, int]:
        i, method, n = job
        return (self.units[i].id, method, n)

    @contextmanager
    def recording(self, progress: bool) -> Iterator[Recorder]:
        """Append finished records to results.jsonl (each fsynced) while a progress bar counts the steps."""
        from tqdm.auto import tqdm

        bar = tqdm(
            total=sum(job_weight(n) for _, _, n in self.jobs), desc="eval", unit="step", disable=not progress,
            dynamic_ncols=True,
        )
        with ResultLog(self.results_path) as log, bar:
            yield Recorder(self, log, bar)

    def finish(self, title: str, *, plots: bool, metadata: dict[str, Any] | None) -> EvalResult:
        """Write summary.json/.md (and the plots) from every finished record."""
        return _finish(self.out, self.config, self.done, self.total_jobs, title, plots=plots, metadata=metadata)

    def stopped(self, reason: str, title: str, metadata: dict[str, Any] | None) -> None:
        """A run that stops early still leaves a (partial) summary of what it finished."""
        logger.warning(
            "%s after %d of %d job(s); finished results are in %s; rerun with resume to finish",
            reason, len(self.done), self.total_jobs, self.results_path,
        )
        self.finish(title, plots=False, metadata=metadata)


@dataclass
class Recorder:
    """Where finished jobs go: the results log, the plan's finished records and the progress bar."""

    plan: RunPlan
    log: ResultLog
    bar: Any

    def started(self, job: Job) -> None:
        unit, method, n = self.plan.key(job)
        self.bar.set_postfix_str(f"{method} N={n} {unit}"[:60], refresh=False)

    def add(self, job: Job, record: dict[str, Any]) -> None:
        self.log.append(record)
        self.plan.done[self.plan.key(job)] = record
        self.bar.update(job_weight(job[2]))


def plan_run(
    out: Path,
    config: EvalConfig,
    units: list[EvalUnit],
    fingerprint: dict[str, Any],
    *,
    resume: bool,
    overwrite: bool,
    metadata: dict[str, Any] | None,
) -> RunPlan:
    """Check (or start) the output folder, read what an earlier run finished, plan the rest."""
    out.mkdir(parents=True, exist_ok=True)
    _prepare_out_dir(out, fingerprint, resume=resume, overwrite=overwrite)
    run_path = out / RUN_FILE
    if not run_path.exists():
        write_json_atomic(
            run_path,
            {
                "started_at": datetime.now(timezone.utc).isoformat(),
                "fingerprint": fingerprint,
                "config": config.model_dump(mode="json"),
                "methods": {m: METHODS[m].description for m in config.methods},
                "metadata": metadata or {},
            },
        )

    results_path = out / RESULTS_FILE
    records, _ = read_results(results_path, repair=True)
    planned = [(method, n) for method in config.methods for n in config.jobs_n(method)]
    planned_keys = {(u.id, m, n) for u in units for m, n in planned}
    done = {result_key(r): r for r in records if result_key(r) in planned_keys}
    if config.mode == "per_task":
        dropped = _drop_unfinished_groups(done, units, planned)
        if dropped:
            keep = [r for r in records if result_key(r) not in dropped]
            rewrite_results(results_path, keep)
            logger.info("per_task: re-running %d partly finished (method, N) sequence(s) from the start", len(dropped))

    jobs = _plan_jobs(units, planned, config.mode, done)
    if done:
        logger.info("resuming: %d of %d (unit, method, N) job(s) already done", len(done), len(planned_keys))
    return RunPlan(out=out, config=config, units=units, done=done, jobs=jobs, total_jobs=len(planned_keys))


def run_evaluation(
    units: Sequence[EvalUnit],
    model: Any = None,
    tokenizer: Any = None,
    *,
    embedder: Any,
    source: CandidateSource,
    out_dir: str | Path,
    config: EvalConfig | None = None,
    adapter: Any = None,
    namespace: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    plots: bool = True,
    title: str = "BPB evaluation",
    metadata: dict[str, Any] | None = None,
) -> EvalResult:
    """Compare methods on `units`; write results.jsonl, run.json, summary.json/.md and the plots.

    Give either a model (a `LoadedModel`, or a model and its tokenizer; LoRA wraps it in place, the
    reference protocol trains all its weights) or an existing `TestTimeAdapter` (`adapter=`, reused
    with its source and config restored afterwards). `source` serves the candidates (a
    `TrajectoryMemory` or `InMemoryCandidates`); `namespace` is the memory namespace to draw from.
    `metadata` (JSON-serialisable) is copied into run.json and summary.json. To shard the units over
    Ray workers use `hullft_agent.evaluation.distributed.run_evaluation_ray` (same outputs).
    """
    config = config or EvalConfig()
    units = check_units(units)
    runner = JobRunner(units, model, tokenizer, embedder=embedder, source=source, config=config, adapter=adapter,
                       namespace=namespace)
    plan = plan_run(Path(out_dir).expanduser(), config, units, runner.fingerprint(), resume=resume,
                    overwrite=overwrite, metadata=metadata)
    try:
        if plan.jobs:
            runner.embed(plan.jobs)
            with plan.recording(progress) as recorder:
                for job in plan.jobs:
                    recorder.started(job)
                    recorder.add(job, runner.run(job))
    except KeyboardInterrupt:
        plan.stopped("interrupted", title, metadata)
        raise
    finally:
        runner.close()
    return plan.finish(title, plots=plots, metadata=metadata)


def _drop_unfinished_groups(
    done: dict[tuple[str, str, int], dict[str, Any]], units: list[EvalUnit], planned: list[tuple[str, int]]
) -> set[tuple[str, str, int]]:
    """per_task results depend on the units before them: a partly done (method, N) reruns whole."""
    dropped: set[tuple[str, str, int]] = set()
    for method, n in planned:
        if METHODS[method].selection is None:
            continue
        keys = [(u.id, method, n) for u in units]
        have = [k for k in keys if k in done]
        if have and len(have) < len(keys):
            for key in have:
                dropped.add(key)
                del done[key]
    return dropped


def _plan_jobs(
    units: list[EvalUnit], planned: list[tuple[str, int]], mode: str, done: dict[Any, Any]
) -> list[tuple[int, str, int]]:
    """(unit index, method, N) in run order: per_query goes unit by unit, per_task sequence by sequence."""
    if mode == "per_query":
        order = [(i, m, n) for i in range(len(units)) for m, n in planned]
    else:
        order = [(i, m, n) for m, n in planned for i in range(len(units))]
    return [(i, m, n) for i, m, n in order if (units[i].id, m, n) not in done]


def _run_job(
    adapter: Any,
    guard: GuardedSource,
    unit: EvalUnit,
    vector: np.ndarray | None,
    embed_time: float,
    method: str,
    n: int,
    config: EvalConfig,
    finetune: FinetuneConfig,
) -> dict[str, Any]:
    spec = METHODS[method]
    times = {"embed": 0.0, "retrieve": 0.0, "select": 0.0, "finetune": 0.0, "score": 0.0}
    report = None
    score_kwargs = {"max_length": config.score_max_length, "batch_size": config.score_batch_size}
    if spec.selection is None:
        t0 = time.perf_counter()
        with adapter.session.disabled():
            scored = adapter.score([unit.text], **score_kwargs)
        times["score"] = time.perf_counter() - t0
    else:
        finetune = finetune.model_copy(update={"refresh_interval": spec.refresh_interval})
        overrides = AdaptOverrides(method=spec.selection, n=n, k=config.k, mode=config.mode, finetune=finetune)
        task_key = unit.task if config.mode == "per_query" else f"{method}|{n}|{task_group(unit)}"
        guard.begin(unit)
        report = adapter.adapt(unit.query, task=task_key, episode_id=unit.episode, query_vector=vector,
                               source=guard, overrides=overrides)
        guard.check_selected(report.selected_ids)
        times["embed"] = embed_time
        for key in ("retrieve", "select", "finetune"):
            times[key] = float(report.timings.get(key, 0.0))
        t0 = time.perf_counter()
        scored = adapter.score([unit.text], **score_kwargs)
        times["score"] = time.perf_counter() - t0
        if config.mode == "per_query":
            adapter.session.reset()
    times["total"] = math.fsum(times.values())
    if not math.isfinite(scored.nll_nats):
        raise RuntimeError(f"unit {unit.id!r} scored a non-finite NLL under {method} N={n}")
    return {
        "unit": unit.id,
        "group": unit.group,
        "episode": unit.episode,
        "task": unit.task,
        "method": method,
        "n": n,
        "nll_nats": scored.nll_nats,
        "n_bytes": scored.n_bytes,
        "n_tokens": scored.n_tokens,
        "bpb": scored.bpb,
        "passes": report.passes if report else 0,
        "steps": report.steps if report else 0,
        "support": len(report.selected_ids) if report else 0,
        "pool_size": report.pool_size if report else 0,
        "skipped": bool(report.skipped) if report else False,
        "skip_reason": report.skip_reason if report else None,
        "times": times,
        "selected_ids": list(report.selected_ids) if report else [],
        "counts": list(report.counts) if report else [],
    }


def _finish(
    out: Path,
    config: EvalConfig,
    done: dict[tuple[str, str, int], dict[str, Any]],
    total_jobs: int,
    title: str,
    *,
    plots: bool,
    metadata: dict[str, Any] | None = None,
) -> EvalResult:
    files: dict[str, Path] = {"results": out / RESULTS_FILE, "run": out / RUN_FILE}
    if not done:
        summary: dict[str, Any] = {"units": 0, "results": [], "by_group": {}, "bootstrap": config.bootstrap,
                                   "confidence": config.confidence, "seed": config.seed}
    else:
        summary = summarize(
            done.values(), methods=config.methods, ns=config.n, bootstrap=config.bootstrap,
            confidence=config.confidence, seed=config.seed,
        )
    summary["complete"] = len(done) == total_jobs
    summary["jobs"] = {"done": len(done), "total": total_jobs}
    summary["run"] = {
        "methods": config.methods, "n": config.n, "k": config.k, "mode": config.mode,
        "protocol": config.protocol, "exclude_task": config.exclude_task,
    }
    if metadata:
        summary["metadata"] = metadata
    markdown = summary_markdown(summary, title) if done else f"# {title}\n\nNo finished results yet.\n"
    files["summary_json"] = write_json_atomic(out / SUMMARY_JSON, summary)
    files["summary_md"] = write_atomic(out / SUMMARY_MD, markdown)
    if plots and done:
        try:
            from hullft_agent.evaluation.plots import plot_bpb_vs_n, plot_bpb_vs_time

            files["plot_n"] = plot_bpb_vs_n(summary, out / PLOT_N, title=title)
            files["plot_time"] = plot_bpb_vs_time(summary, out / PLOT_TIME, title=title)
        except ImportError as exc:
            logger.warning("plots skipped: %s (pip install matplotlib)", exc)
    return EvalResult(summary=summary, markdown=markdown, out_dir=out, files=files)
