"""Shard an evaluation over Ray workers; the driver writes the same folder a local run writes.

    result = run_evaluation_ray(units, model=partial(load_model, name_or_path=path),
                                embedder=Embedder, source=MemorySource.of(memory),
                                out_dir="eval-out", config=config, ray_address="auto")

Why a function of its own rather than a `ray_address=` switch on `run_evaluation`: a worker has to
build its model, embedder and source itself, so this path takes factories (picklable callables) where
the local path takes loaded objects, and one signature serving both would give half its arguments a
second meaning. Everything that produces or stores a number is shared with the local run: every worker
holds a `runner.JobRunner` (the same guard, the same seeded LoRA initialisation, the same `_run_job`),
and the driver uses `plan_run`, `RunPlan.recording` and `RunPlan.finish` for the resume check,
results.jsonl, run.json, the summary and the plots. So a Ray run and a local run with equal settings
give equal tables and resume each other's folders.

Sharding: per_query jobs are independent and are handed out one at a time to whichever worker is free.
In per_task mode a unit's result depends on the units of its task before it in the same (method, N)
sequence, so each (method, N, task) chain goes to one worker, in order. Every worker embeds the
queries of all the run's jobs in one batch, as the local run does, so query vectors match bit for bit.
With equal seeds, models and torch thread counts (a CPU worker uses as many threads as it has CPUs) the
per-unit numbers are the local run's; a GPU worker computes in other kernels, like a local GPU run.

The driver appends each record to results.jsonl as its worker returns it, so a killed run keeps its
finished work; a worker error stops the run with `RayWorkerError` naming the unit, after a partial
summary is written and the workers are shut down.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hullft_agent.candidates import CandidateSource
from hullft_agent.errors import InvalidArgumentError, InvalidTypeError, RayUnavailableError, RayWorkerError
from hullft_agent.evaluation.methods import METHODS, EvalConfig
from hullft_agent.evaluation.plan import EvalResult, Job, RunPlan, check_out_dir, job_weight, plan_run
from hullft_agent.evaluation.runner import JobRunner, check_units, task_group
from hullft_agent.evaluation.units import EvalUnit

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "hullft-agent[ray]"'
_CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class MemorySource:
    """Opens a `TrajectoryMemory` inside each worker (local path or shared object storage), pinned to a version.

    A LanceDB handle does not travel between processes; its config does. Pinning to the version the driver
    read its units from gives every worker the same snapshot, however long the run.
    """

    config: Any  # hullft_agent.memory.MemoryConfig
    version: int | None = None

    @classmethod
    def of(cls, memory: Any) -> MemorySource:
        """The source for `memory` as it is now (its config and current version)."""
        return cls(memory.config, memory.version)

    def __call__(self, embedder: Any) -> CandidateSource:
        from hullft_agent.memory import TrajectoryMemory

        memory = TrajectoryMemory(self.config, embedder=embedder)
        if self.version is not None:
            memory.checkout(self.version)
        return memory


class EvalWorker:
    """One Ray actor: loads the model, the embedder and the source once, then runs the jobs it is sent."""

    def __init__(
        self,
        model: Callable[[], Any],
        embedder: Callable[[], Any],
        source: CandidateSource | Callable[[Any], CandidateSource],
        units: list[EvalUnit],
        config: EvalConfig,
        namespace: str | None,
        threads: int,
    ) -> None:
        import torch

        torch.set_num_threads(threads)  # the CPUs Ray reserved for this worker, not the whole machine
        emb = embedder()
        loaded = model()
        model_obj, tokenizer = loaded if isinstance(loaded, tuple) else (loaded, None)
        if not isinstance(source, CandidateSource):
            source = source(emb)
        self.runner = JobRunner(units, model_obj, tokenizer, embedder=emb, source=source, config=config,
                                namespace=namespace)

    def fingerprint(self) -> dict[str, Any]:
        return self.runner.fingerprint()

    def embed(self, jobs: list[Job]) -> None:
        self.runner.embed(jobs)

    def run(self, job: Job) -> dict[str, Any]:
        return self.runner.run(job)


# ---------------------------------------------------------------------------------------- Ray


def import_ray() -> Any:
    """The `ray` module, or an error that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailableError(f"Ray is not installed; {INSTALL_HINT}") from exc
    return ray


def _check_reachable(address: str) -> None:
    """Fail fast and clearly: `ray.init` waits a minute or more on an address where nothing listens."""
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidArgumentError(f"Ray address {address!r}: expected auto, local, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise RayUnavailableError(
            f"cannot connect to the Ray cluster at {address!r}: nothing answers at {host}:{port} "
            f"({exc.strerror or exc}); start one with `ray start --head`, or use 'auto' (a running cluster) "
            "or 'local' (a new one on this machine)"
        ) from None


def connect(address: str | None) -> bool:
    """Connect this process to Ray; True when this call connected (the run then disconnects at the end).

    None or 'local': the current connection if there is one, else a new Ray instance on this machine.
    'auto': a running cluster ($RAY_ADDRESS or the one `ray start` left on this machine). Otherwise
    HOST:PORT (the head's GCS port) or ray://HOST:PORT (Ray Client), checked to answer first. A process
    that already called `ray.init` keeps its connection.
    """
    ray = import_ray()
    if address not in (None, "auto", "local"):
        _check_reachable(address)
    if ray.is_initialized():
        logger.info("using this process's Ray connection")
        return False
    try:
        if address in (None, "local"):
            ray.init()
        else:
            ray.init(address=address)
    except ConnectionError as exc:
        raise RayUnavailableError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from None
    return True


def _resources(ray: Any, num_gpus: float | None) -> float:
    """GPUs per worker: the given number, else one when the cluster has GPUs."""
    if num_gpus is not None:
        if num_gpus < 0:
            raise InvalidArgumentError(f"num_gpus must be >= 0, got {num_gpus}")
        return float(num_gpus)
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def _worker_count(ray: Any, workers: int | None, num_cpus: float, num_gpus: float, items: int) -> int:
    """The requested count, or as many workers as the free CPUs/GPUs hold; never more than work items."""
    free = ray.available_resources()
    limits = []
    if num_cpus > 0:
        limits.append(int(free.get("CPU", 0) // num_cpus))
    if num_gpus > 0:
        limits.append(int(free.get("GPU", 0) // num_gpus))
    fits = max(1, min(limits)) if limits else 1
    if workers is None:
        workers = fits
    elif workers > fits:
        logger.warning("%d workers asked for, the cluster has room for %d now; the others wait for resources",
                       workers, fits)
    return max(1, min(workers, items))


def shard_jobs(units: list[EvalUnit], jobs: Sequence[Job], mode: str) -> list[list[Job]]:
    """Independent work items. per_query: one job each, in run order (a killed run has finished the first
    units, as a local one would). per_task: one job per base unit and one (method, N, task) chain in run
    order (a unit's adapter carries what the earlier units of its task taught it), longest first."""
    if mode == "per_query":
        return [[job] for job in jobs]
    items: dict[tuple[Any, ...], list[Job]] = {}
    for job in jobs:
        i, method, n = job
        key = (job,) if METHODS[method].selection is None else (method, n, task_group(units[i]))
        items.setdefault(key, []).append(job)
    return sorted(items.values(), key=lambda item: -sum(job_weight(n) for _, _, n in item))


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    first = str(exc).strip().splitlines()
    return first[-1] if first else type(exc).__name__


# ---------------------------------------------------------------------------------------- the run


def run_evaluation_ray(
    units: Sequence[EvalUnit],
    *,
    model: Callable[[], Any],
    embedder: Callable[[], Any],
    source: CandidateSource | Callable[[Any], CandidateSource],
    out_dir: str | Path,
    config: EvalConfig | None = None,
    namespace: str | None = None,
    ray_address: str | None = None,
    workers: int | None = None,
    num_cpus: float = 1,
    num_gpus: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    plots: bool = True,
    title: str = "BPB evaluation",
    metadata: dict[str, Any] | None = None,
) -> EvalResult:
    """`run_evaluation` with the jobs sharded over Ray actors; the same files, table and resume rules.

    `model()` returns a `LoadedModel` (or a (model, tokenizer) pair) and `embedder()` an embedder; each
    worker calls them once. `source` is a picklable `CandidateSource` (e.g. `InMemoryCandidates`) or a
    callable `source(embedder)` each worker calls, e.g. `MemorySource.of(memory)` to open a LanceDB
    memory by its URI. `ray_address`: see `connect`. `workers`: default as many as the free CPUs (or
    GPUs) hold; each takes `num_cpus` CPUs and `num_gpus` GPUs (default one when the cluster has GPUs).
    """
    config = config or EvalConfig()
    units = check_units(units)
    out = Path(out_dir).expanduser()
    check_out_dir(out, resume=resume, overwrite=overwrite)  # before anything starts
    if not (isinstance(source, CandidateSource) or callable(source)):
        raise InvalidTypeError(f"source must be a CandidateSource or a callable source(embedder), got {type(source).__name__}")
    if num_cpus < 0:
        raise InvalidArgumentError(f"num_cpus must be >= 0, got {num_cpus}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InvalidArgumentError(f"workers must be an integer >= 1, got {workers!r}")
    ray = import_ray()
    connected_here = connect(ray_address)
    actors: list[Any] = []
    try:
        gpus = _resources(ray, num_gpus)
        every_job = [(i, m, n) for m in config.methods for n in config.jobs_n(m) for i in range(len(units))]
        count = _worker_count(ray, workers, num_cpus, gpus, len(shard_jobs(units, every_job, config.mode)))
        logger.info("starting %d Ray worker(s), %g CPU and %g GPU each", count, num_cpus, gpus)
        actor_class = ray.remote(EvalWorker).options(num_cpus=num_cpus, num_gpus=gpus)
        units_ref = ray.put(units)
        threads = max(1, int(num_cpus))
        actors = [actor_class.remote(model, embedder, source, units_ref, config, namespace, threads)
                  for _ in range(count)]
        fingerprint = _fingerprint_of(ray, actors)
        plan = plan_run(out, config, units, fingerprint, resume=resume, overwrite=overwrite, metadata=metadata)
        try:
            if plan.jobs:
                _drive(ray, actors, plan, progress)
        except (KeyboardInterrupt, RayWorkerError) as exc:
            plan.stopped("interrupted" if isinstance(exc, KeyboardInterrupt) else "a worker failed", title,
                         metadata)
            raise
    finally:
        for actor in actors:
            ray.kill(actor)
        if connected_here:
            ray.shutdown()
    return plan.finish(title, plots=plots, metadata=metadata)


def _fingerprint_of(ray: Any, actors: list[Any]) -> dict[str, Any]:
    """The run's fingerprint, from the workers once they have loaded everything; they must all agree."""
    try:
        prints = ray.get([actor.fingerprint.remote() for actor in actors])
    except ray.exceptions.RayError as exc:
        raise RayWorkerError(f"a Ray worker failed to start (loading the model, embedder or source): "
                             f"{_cause(exc)}") from exc
    if any(p != prints[0] for p in prints[1:]):
        raise RayWorkerError("the Ray workers loaded different models or settings (their fingerprints differ); "
                             "check that every node has the same model files and package versions")
    return prints[0]


def _drive(ray: Any, actors: list[Any], plan: RunPlan, progress: bool) -> None:
    """Hand out work items to free workers; record each job's result as it arrives."""
    try:
        ray.get([actor.embed.remote(plan.jobs) for actor in actors])
    except ray.exceptions.RayError as exc:
        raise RayWorkerError(f"a Ray worker failed to embed the queries: {_cause(exc)}") from exc
    items = deque(deque(item) for item in shard_jobs(plan.units, plan.jobs, plan.config.mode))
    current: list[deque[Job]] = [deque() for _ in actors]
    pending: dict[Any, tuple[int, Job]] = {}
    with plan.recording(progress) as recorder:

        def feed(w: int) -> None:
            if not current[w] and items:
                current[w] = items.popleft()
            if current[w]:
                job = current[w].popleft()
                pending[actors[w].run.remote(job)] = (w, job)
                recorder.started(job)

        for w in range(len(actors)):
            feed(w)
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            w, job = pending.pop(ref)
            try:
                record = ray.get(ref)
            except ray.exceptions.RayError as exc:
                unit, method, n = plan.key(job)
                raise RayWorkerError(
                    f"unit {unit!r} ({method} N={n}) failed on Ray worker {w}: {_cause(exc)}",
                    unit=unit, method=method, n=n,
                ) from exc
            recorder.add(job, record)
            feed(w)
