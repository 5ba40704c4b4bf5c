"""Run a method comparison: for every unit, method and N, adapt, score the unit's BPB, log the numbers.

`per_query` mode restarts every unit from the base model; `per_task` keeps one adapter per task (and
per method and N) that accumulates over the units of the task in order. The methods and settings are
in `methods`, the leakage guard every candidate passes in `guard`, the output folder and resume in
`plan`. `JobRunner` computes the records; `distributed.run_evaluation_ray` holds one in every Ray worker.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hullft_agent.candidates import CandidateSource
from hullft_agent.config import AdapterConfig, AdaptOverrides, FinetuneConfig, SelectionConfig
from hullft_agent.errors import InvalidArgumentError, InvalidTypeError, NoUnitsError
from hullft_agent.evaluation.guard import GuardedSource
from hullft_agent.evaluation.methods import METHODS, EvalConfig
from hullft_agent.evaluation.plan import EvalResult, Job, plan_run
from hullft_agent.evaluation.units import EvalUnit, units_fingerprint


def _context_length(model: Any) -> int | None:
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 1 else None


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


def check_units(units: Sequence[EvalUnit]) -> list[EvalUnit]:
    """The units as a list: at least one, ids unique (results are keyed by unit id)."""
    units = list(units)
    if not units:
        raise NoUnitsError("no units to evaluate")
    ids = [u.id for u in units]
    if len(set(ids)) != len(ids):
        raise InvalidArgumentError("unit ids must be unique")
    return units


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
                raise InvalidArgumentError("pass a model (or a LoadedModel), or an existing TestTimeAdapter as adapter=")
            if tokenizer is None and hasattr(model, "tokenizer"):
                model, tokenizer = model.model, model.tokenizer
            if tokenizer is None:
                raise InvalidArgumentError("pass the model's tokenizer (or a LoadedModel)")
            if _has_lora_layers(model):
                raise InvalidArgumentError(
                    "the model already carries LoRA layers (a TestTimeAdapter wrapped it): pass that adapter as "
                    "adapter=, or load a separate copy of the model"
                    + (" (the reference protocol trains every weight of a plain model)"
                       if config.protocol == "reference" else "")
                )
            base_model = model
        else:
            if not isinstance(adapter, TestTimeAdapter):
                raise InvalidTypeError(f"adapter must be a TestTimeAdapter, got {type(adapter).__name__}")
            base_model = adapter.model
        self.finetune = config.training(_context_length(base_model))
        if adapter is not None and adapter.session.method != self.finetune.method:
            raise InvalidArgumentError(
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
