"""An evaluation's output folder: the resume check, the jobs left, the results log and the summary.

Every finished (unit, method, N) is appended to `results.jsonl` and fsynced. A rerun with `resume`
skips the finished keys (and cuts a torn last line off), and gives the same final table. `plan_run`
and `RunPlan` keep the folder for `run_evaluation` and `distributed.run_evaluation_ray` alike.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hullft_agent.errors import InvalidArgumentError
from hullft_agent.evaluation.methods import METHODS, EvalConfig
from hullft_agent.evaluation.report import summarize, summary_markdown
from hullft_agent.evaluation.results import ResultLog, read_results, result_key, rewrite_results
from hullft_agent.evaluation.units import EvalUnit
from hullft_agent.files import write_atomic, write_json_atomic

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
PLOT_N = "bpb_vs_n.png"
PLOT_TIME = "bpb_vs_time.png"
_OUTPUT_FILES = (RESULTS_FILE, RUN_FILE, SUMMARY_JSON, SUMMARY_MD, PLOT_N, PLOT_TIME)

#: One job: (index of the unit in the run's unit list, method, N).
Job = tuple[int, str, int]


def job_weight(n: int) -> int:
    return n + 1  # about one pass per training instance, plus scoring


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


def check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> list[str]:
    """The earlier run's files in `out`; refuses them unless resuming or overwriting (cheap, checked early)."""
    existing = [name for name in _OUTPUT_FILES if (out / name).exists()]
    if existing and not resume and not overwrite:
        raise InvalidArgumentError(
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
            raise InvalidArgumentError(
                f"cannot resume {out}: the earlier run differs in {changed} (e.g. other units, K, mode, protocol, "
                "finetune settings or model); use another output folder or --overwrite"
            )
    elif resume and (out / RESULTS_FILE).exists():
        raise InvalidArgumentError(f"cannot resume {out}: {RESULTS_FILE} exists but {RUN_FILE} is missing")


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
