"""TestTimeAdapter: embed the context, pull candidates, select a support set, finetune, report.

One call to `adapt` runs the whole data flow of DESIGN.md and returns an `AdaptationReport` saying
what was chosen and where the time went. The adapter depends only on interfaces: an embedder with
`encode`, a `CandidateSource`, and a finetune session, so storage and model details stay elsewhere.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field

from hullft_agent.candidates import CandidateSource, check_vectors
from hullft_agent.config import AdapterConfig, AdaptOverrides
from hullft_agent.decisions import decision_instance, is_decision
from hullft_agent.errors import InvalidArgumentError, InvalidTypeError
from hullft_agent.files import write_json_atomic
from hullft_agent.finetune import Completion, create_session, encode_for_training, train_multiset
from hullft_agent.metrics import BPBResult, score_texts

logger = logging.getLogger(__name__)

DEFAULT_TASK = "default"


class AdaptationReport(BaseModel):
    """What one adaptation chose and cost. Times are wall seconds per stage."""

    method: str
    mode: str
    task: str | None = None
    n: int
    k: int = Field(description="candidate pool size requested")
    pool_size: int = 0
    selected_ids: list[str] = Field(default_factory=list)
    weights: list[float] = Field(default_factory=list)
    counts: list[int] = Field(default_factory=list)
    trained_counts: list[int] = Field(
        default_factory=list,
        description="instances of each selected row trained by this call (= counts, except per_task incremental)",
    )
    deferred: int = Field(0, description="selected instances this call left untrained to keep within max_instances")
    task_steps: int = Field(0, description="per_task: instances the task's adapter has been trained on so far")
    decisions: int = Field(0, description="selected rows that are decisions (trained prompt -> answer)")
    excluded: dict[str, str] = Field(default_factory=dict, description="selected rows left out of training, and why")
    similarities: list[float] = Field(default_factory=list)
    residual_norm: float | None = None
    iterations: int | None = None
    steps: int = 0
    passes: int = Field(0, description="forward-backward passes actually computed")
    losses: list[float] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    skipped: bool = False
    skip_reason: str | None = None
    stopped_reason: str | None = Field(None, description="why finetuning stopped early (e.g. non-finite loss)")

    @property
    def adapted(self) -> bool:
        """The model answering differs from the base: trained now, or a per_task adapter trained before."""
        return not self.skipped and (self.steps > 0 or self.task_steps > 0)


def _task_key(task: str | None, namespace: str | None) -> str:
    """The per_task adapter slot: the task within its namespace (names have no control characters)."""
    key = task or DEFAULT_TASK
    return key if namespace is None else f"{namespace}\x1f{key}"


def _task_file(directory: Path, key: str) -> Path:
    """A file name per slot; a key with characters a file name cannot hold gets a hash, so none collide."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:100] or "_"
    if safe != key:
        safe = f"{safe[:80]}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    return directory / f"{safe}.safetensors"


def _ledger_file(directory: Path, task: str) -> Path:
    return _task_file(directory, task).with_suffix(".ledger.json")


class _Ledger:
    """What a per_task adapter has been trained on: memory id -> instances, and the total steps."""

    def __init__(self, counts: dict[str, int] | None = None, steps: int = 0) -> None:
        self.counts: dict[str, int] = dict(counts or {})
        self.steps = steps

    def copy(self) -> _Ledger:
        return _Ledger(self.counts, self.steps)

    def untrained(self, ids: list[str], counts: list[int]) -> list[int]:
        """Instances of each selected row the adapter still lacks: max(0, count - already trained)."""
        return [max(0, c - self.counts.get(i, 0)) for i, c in zip(ids, counts, strict=True)]

    def record(self, ids: list[str], trained: list[int]) -> None:
        for i, t in zip(ids, trained, strict=True):
            if t:
                self.counts[i] = self.counts.get(i, 0) + t
        self.steps += sum(trained)

    def save(self, path: Path) -> None:
        write_json_atomic(path, {"counts": self.counts, "steps": self.steps}, indent=None)

    @classmethod
    def load(cls, path: Path) -> _Ledger:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls({str(k): int(v) for k, v in data.get("counts", {}).items()}, int(data.get("steps", 0)))


class TestTimeAdapter:
    """Adapts a local causal LM to each context by finetuning on a selected slice of memory.

    The configuration and the candidate source are fixed at construction; a call changes them for
    itself only (`adapt(..., overrides=AdaptOverrides(n=8), source=other)`).

    Modes: `per_query` resets the adapter before every adaptation (the published protocol);
    `per_task` keeps one adapter state per task key and swaps them when the task changes. With
    `config.incremental`, a per_task adaptation trains only the instances of its selected multiset
    that the task's adapter has not been trained on yet: consecutive steps of one task select
    overlapping rows, so later steps train little or nothing (`report.trained_counts`).
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        embedder: Any,
        source: CandidateSource,
        config: AdapterConfig | None = None,
    ) -> None:
        if tokenizer is None:
            if not hasattr(model, "tokenizer"):
                raise InvalidTypeError("pass a LoadedModel, or a model together with its tokenizer")
            model, tokenizer = model.model, model.tokenizer
        if not isinstance(source, CandidateSource):
            raise InvalidTypeError(f"source must implement CandidateSource.candidates(...), got {type(source).__name__}")
        self._config = config or AdapterConfig()
        self._embedder = embedder
        self._source = source
        self._tokenizer = tokenizer
        self._session = create_session(model, tokenizer, self._config.finetune)
        self._task_states: dict[str, dict[str, torch.Tensor]] = {}
        self._ledgers: dict[str, _Ledger] = {}
        self._active_task: str | None = None

    @property
    def config(self) -> AdapterConfig:
        """The adapter's own (frozen) configuration; per-call overrides never change it."""
        return self._config

    @property
    def source(self) -> CandidateSource:
        """Where candidates come from unless a call passes its own `source`."""
        return self._source

    @property
    def embedder(self) -> Any:
        return self._embedder

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def session(self) -> Any:
        """The finetune session (reset, snapshot, `disabled()` for base-model outputs)."""
        return self._session

    def resolve(self, overrides: AdaptOverrides | dict[str, Any] | None = None) -> AdapterConfig:
        """The configuration one call runs with: the adapter's, with `overrides` applied."""
        if overrides is None:
            return self._config
        if not isinstance(overrides, AdaptOverrides):
            overrides = AdaptOverrides.model_validate(overrides)
        return overrides.apply(self._config)

    @property
    def model(self) -> torch.nn.Module:
        """The model in its current (possibly adapted) state; use it to generate or score."""
        return self.session.model

    # ------------------------------------------------------------------ state management
    def reset(self) -> None:
        """Return to the base model; in per_task mode the active task's adapter is kept for later."""
        self._stash_active_task()
        self.session.reset()

    def forget_tasks(self) -> None:
        """Drop every per_task adapter kept in memory (files in `adapter_dir` stay) and return to base."""
        self._active_task = None
        self._task_states.clear()
        self._ledgers.clear()
        self.session.reset()

    def release_task(self, task: str | None, *, namespace: str | None = None, save: bool = True) -> bool:
        """Drop one per_task adapter from memory, so its next activation reads `adapter_dir` afresh.

        For a server that hands a session to another process: `save=True` writes it to `adapter_dir`
        first (when set); `save=False` discards a copy that may be older than the file another process
        wrote. Returns whether this adapter held the task in memory.
        """
        key = _task_key(task, namespace)
        held = key == self._active_task or key in self._task_states
        if key == self._active_task:  # a stashed task was written to adapter_dir when it was swapped out
            if save:
                self._save_task(key)
            self._active_task = None
            self.session.reset()
        self._task_states.pop(key, None)
        self._ledgers.pop(key, None)
        return held

    def _stash_active_task(self) -> None:
        if self._active_task is not None:
            self._task_states[self._active_task] = self.session.state_dict()
            self._save_task(self._active_task)
            self._active_task = None

    def _activate_task(self, task: str) -> None:
        if self._active_task == task:
            return
        self._stash_active_task()
        directory = self.config.adapter_dir
        if task in self._task_states:
            self.session.load_state_dict(self._task_states[task])
        elif directory is not None and _task_file(directory, task).exists():
            self.session.load(_task_file(directory, task))
            ledger = _ledger_file(directory, task)
            self._ledgers[task] = _Ledger.load(ledger) if ledger.exists() else _Ledger()
        else:
            self.session.reset()
            self._ledgers.pop(task, None)
        self._active_task = task

    def _save_task(self, task: str) -> None:
        if self.config.adapter_dir is None:
            return
        self.config.adapter_dir.mkdir(parents=True, exist_ok=True)
        self.session.snapshot(_task_file(self.config.adapter_dir, task))
        self._ledger(task).save(_ledger_file(self.config.adapter_dir, task))

    def _ledger(self, task: str) -> _Ledger:
        return self._ledgers.setdefault(task, _Ledger())

    def save_tasks(self) -> None:
        """Write the active task's adapter to `adapter_dir` (others are written when swapped out)."""
        if self._active_task is not None:
            self._task_states[self._active_task] = self.session.state_dict()
            self._save_task(self._active_task)

    # ------------------------------------------------------------------ the adaptation
    def adapt(
        self,
        context: str,
        *,
        task: str | None = None,
        episode_id: str | None = None,
        query_vector: np.ndarray | None = None,
        on_step: Callable[[int], None] | None = None,
        source: CandidateSource | None = None,
        overrides: AdaptOverrides | dict[str, Any] | None = None,
        namespace: str | None = None,
    ) -> AdaptationReport:
        """Adapt the model to `context`; candidates from `episode_id` are excluded (no leakage).

        `source` replaces the adapter's candidate source and `overrides` its settings for this call
        only. per_task adapters are kept per (`namespace`, task): two tenants' tasks of the same
        name never share one. `on_step(steps_done)` is called after each training step, e.g. to drive a progress bar.
        """
        if not isinstance(context, str) or not context.strip():
            raise InvalidArgumentError(f"context must be a non-empty string, got {context!r:.60}")
        if source is not None and not isinstance(source, CandidateSource):
            raise InvalidTypeError(f"source must implement CandidateSource.candidates(...), got {type(source).__name__}")
        config = self.resolve(overrides)
        if config.finetune.method != self.session.method:
            raise InvalidArgumentError(
                f"overrides.finetune.method is {config.finetune.method!r} but this adapter's session trains "
                f"{self.session.method!r}; build another adapter (and model copy) for another method"
            )
        sel = config.selection
        mode = config.mode
        report = AdaptationReport(method=sel.method, mode=mode, task=task, n=sel.n, k=sel.k)
        start = time.perf_counter()
        if mode == "per_query":
            self.reset()  # a per_task adapter active before a switch to per_query is kept, not lost
            restore = self.session.reset
            ledger = None
        else:
            key = _task_key(task, namespace)
            self._activate_task(key)
            before, ledger_before = self.session.state_dict(), self._ledger(key).copy()

            def restore() -> None:
                self.session.load_state_dict(before)
                self._ledgers[key] = ledger_before

            ledger = self._ledger(key)
        try:
            self._run(config, source or self._source, context, task, episode_id, query_vector, report, on_step,
                      ledger)
        except BaseException:
            restore()  # nothing half-adapted survives an error
            raise
        if report.stopped_reason:
            restore()  # training stopped early (non-finite loss): keep what the task had before
        report.timings["total"] = time.perf_counter() - start
        logger.info(
            "adapt: method=%s pool=%d support=%d steps=%d passes=%d skipped=%s total=%.3fs",
            report.method, report.pool_size, len(report.selected_ids), report.steps, report.passes,
            report.skip_reason, report.timings["total"],
        )
        return report

    def _run(
        self,
        config: AdapterConfig,
        source: CandidateSource,
        context: str,
        task: str | None,
        episode_id: str | None,
        query_vector: np.ndarray | None,
        report: AdaptationReport,
        on_step: Callable[[int], None] | None,
        ledger: _Ledger | None,
    ) -> None:
        sel = config.selection
        timings = report.timings
        if ledger is not None:
            report.task_steps = ledger.steps
        if sel.method == "none":
            report.skipped, report.skip_reason = True, "selection method is 'none'"
            return

        t0 = time.perf_counter()
        if query_vector is None:
            q = np.asarray(self.embedder.encode(context), dtype=np.float32)
        else:
            q = check_vectors(np.asarray(query_vector).reshape(1, -1), what="query_vector")[0]
        timings["embed"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        task_filter = task if config.same_task_only else None
        narrow = {}
        if config.learn_from is not None:
            if "learn_from" not in inspect.signature(source.candidates).parameters:
                raise InvalidTypeError(f"learn_from needs a candidate source that supports it (a TrajectoryMemory or "
                                f"InMemoryCandidates); {type(source).__name__}.candidates does not")
            narrow["learn_from"] = config.learn_from
        pool = source.candidates(q, sel.k, task=task_filter, exclude_episode=episode_id, **narrow)
        timings["retrieve"] = time.perf_counter() - t0
        report.pool_size = len(pool)
        if len(pool) == 0:
            report.skipped = True
            report.skip_reason = "no candidates: the memory is empty or every row was filtered out"
            return

        t0 = time.perf_counter()
        selection = sel.select(pool.vectors, q)
        timings["select"] = time.perf_counter() - t0
        idx = selection.indices
        report.selected_ids = [pool.ids[i] for i in idx]
        report.weights = [float(w) for w in selection.weights]
        report.counts = [int(c) for c in selection.counts]
        report.similarities = [float(pool.similarities[i]) for i in idx]
        report.residual_norm = _maybe_float(selection.diagnostics.get("residual_norm"))
        iterations = selection.diagnostics.get("iterations")
        report.iterations = None if iterations is None else int(iterations)

        incremental = ledger is not None and config.incremental
        train = ledger.untrained(report.selected_ids, report.counts) if incremental else list(report.counts)
        instances, excluded = self._instances(pool, idx, config)
        report.decisions = sum(isinstance(x, Completion) for x in instances)
        if excluded:
            report.excluded = {report.selected_ids[j]: why for j, why in excluded.items()}
            train = [0 if j in excluded else c for j, c in enumerate(train)]
            logger.warning("adapt: %d selected row(s) left out of training: %s", len(excluded), report.excluded)
        if config.max_instances is not None:
            wanted = sum(train)
            train = _within_budget(train, report.weights, config.max_instances)
            report.deferred = wanted - sum(train)
        t0 = time.perf_counter()
        result = train_multiset(self.session, instances, train, config.finetune, on_step)
        timings["finetune"] = time.perf_counter() - t0
        report.steps, report.passes, report.losses = result.steps, result.passes, list(result.losses)
        if result.ok:
            report.trained_counts = train
            if ledger is not None:
                ledger.record(report.selected_ids, train)
                report.task_steps = ledger.steps
        else:
            report.stopped_reason = result.stopped_reason or "finetuning failed"
            report.skipped = True
            report.skip_reason = f"finetuning stopped and the adapter was restored: {result.stopped_reason}"

    def _instances(self, pool: Any, idx: Any, config: AdapterConfig) -> tuple[list[Any], dict[int, str]]:
        """What each selected row trains on (its text, or a decision's prompt -> answer), and the rows
        that cannot be trained (position -> reason): a malformed decision, or one the trainer refuses
        (an answer longer than the training length)."""
        ft = config.finetune
        instances: list[Any] = []
        excluded: dict[int, str] = {}
        for j, i in enumerate(idx):
            if not (pool.metadata and is_decision(pool.metadata[i])):
                instances.append(pool.texts[i])
                continue
            try:
                instance = decision_instance(pool.metadata[i], self.tokenizer, config.decision_format)
                encode_for_training(self.tokenizer, instance, ft.max_length, ft.pad_to)  # the trainer's own checks
            except (TypeError, ValueError) as exc:  # malformed rows and the trainer's refusals
                instances.append(pool.texts[i])
                excluded[j] = f"{type(exc).__name__}: {exc}"
                continue
            instances.append(instance)
        return instances, excluded

    @contextmanager
    def adapted(self, context: str, **kwargs: Any) -> Iterator[AdaptationReport]:
        """Adapt for the duration of a `with` block; per_query mode restores the base model after."""
        report = self.adapt(context, **kwargs)
        try:
            yield report
        finally:
            if report.mode == "per_query":
                self.session.reset()

    def score(self, texts: list[str], **kwargs: Any) -> BPBResult:
        """Bits-per-byte of `texts` under the model as it is now (adapted or not)."""
        return score_texts(self.model, self.tokenizer, texts, **kwargs)


def _within_budget(train: list[int], weights: list[float], budget: int) -> list[int]:
    """`train` cut to at most `budget` instances, the rows of largest selection weight first (ties: selection order)."""
    kept = [0] * len(train)
    for j in sorted(range(len(train)), key=lambda j: -weights[j]):
        kept[j] = min(train[j], budget)
        budget -= kept[j]
        if budget == 0:
            break
    return kept


def _maybe_float(value: Any) -> float | None:
    return None if value is None else float(value)
