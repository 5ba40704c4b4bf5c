"""The BPB evaluation sharded over Ray workers: the same table as one process, resume both ways, errors.

Two CPU workers on a local Ray instance, the tiny random model and the hashing embedder of the other
evaluation tests. Every worker start imports torch and transformers (seconds on a busy box), so the
module runs only two distributed evaluations.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import build_tiny_model
from test_evaluation import build_memory, cli_runner, interrupt_after, lines, small_config, table

from hullft_agent.errors import RayUnavailableError, RayWorkerError
from hullft_agent.evaluation import episode_units, read_results, run_evaluation, text_units
from hullft_agent.evaluation.distributed import MemorySource, run_evaluation_ray, shard_jobs
from hullft_agent.memory import TrajectoryMemory
from hullft_agent.memory.testing import HashingEmbedder

ray = pytest.importorskip("ray")

HERE = Path(__file__).resolve().parent
IMPORT_DIRS = (HERE, HERE.parent)  # this folder's modules (factories, test_evaluation) and tests/conftest.py


@pytest.fixture(scope="module")
def cluster():
    """Two CPUs; workers import the test modules (factories, conftest) by name, as pytest does."""
    path = os.pathsep.join(p for p in (*map(str, IMPORT_DIRS), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


@pytest.fixture()
def memory(tmp_path) -> TrajectoryMemory:
    return build_memory(tmp_path / "memory")


@pytest.fixture()
def cli(monkeypatch, tiny_tokenizer):
    return cli_runner(monkeypatch, tiny_tokenizer)


def tiny_pair(tokenizer):
    """A worker's model factory: the same seeded tiny model every test process builds."""
    return build_tiny_model(len(tokenizer)), tokenizer


class FailingMemory(TrajectoryMemory):
    """A memory whose candidate search fails for one query vector: a worker error on a known unit."""

    bad: np.ndarray

    def candidates(self, vector=None, k=200, **kwargs):
        if vector is not None and np.allclose(np.asarray(vector), self.bad):
            raise RuntimeError("disk on fire")
        return super().candidates(vector, k, **kwargs)


@dataclass(frozen=True)
class FailingSource(MemorySource):
    bad: tuple[float, ...] = ()

    def __call__(self, embedder):
        memory = FailingMemory(self.config, embedder=embedder)
        memory.bad = np.asarray(self.bad, dtype=np.float32)
        return memory


def rows(summary: dict) -> list[tuple]:
    return table(SimpleNamespace(summary=summary))


def nll_by_key(records) -> dict[tuple, float]:
    return {(r["unit"], r["method"], r["n"]): r["nll_nats"] for r in records}


# ---------------------------------------------------------------------------------------- runs


def test_per_query_on_two_workers_equals_one_process_and_a_failed_worker_keeps_its_work(
    cluster, memory, tmp_path, tiny_tokenizer
):
    units = episode_units(memory, split="test", unit_size=4)
    config = small_config(methods=["base", "knn", "hullft"], n=[2, 3])
    local = run_evaluation(units, build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, embedder=memory.embedder,
                           source=memory, out_dir=tmp_path / "local", config=config, progress=False)
    reference = nll_by_key(lines(tmp_path / "local" / "results.jsonl"))

    # the last unit's first candidate search raises inside a worker
    last = units[-1]
    bad = tuple(float(x) for x in memory.embedder.encode(last.query))
    out = tmp_path / "ray"
    with pytest.raises(RayWorkerError, match=rf"unit '{last.id}' \((knn|hullft) N=[23]\).*disk on fire") as err:
        run_evaluation_ray(units, model=partial(tiny_pair, tiny_tokenizer), embedder=partial(HashingEmbedder, 32),
                           source=FailingSource(memory.config, memory.version, bad=bad), out_dir=out,
                           config=config, workers=2, progress=False)
    assert err.value.unit == last.id
    finished = lines(out / "results.jsonl")
    assert len(finished) >= 12  # 15 jobs come before the last unit's first search; one may be in flight
    assert all(reference[key] == nll for key, nll in nll_by_key(finished).items())  # bit for bit
    partial_summary = json.loads((out / "summary.json").read_text())
    assert partial_summary["complete"] is False and partial_summary["jobs"]["done"] == len(finished)

    # a local run resumes the Ray run's folder (same fingerprint) and gives the one-process table
    assert json.loads((out / "run.json").read_text())["fingerprint"] == \
        json.loads((tmp_path / "local" / "run.json").read_text())["fingerprint"]
    done = run_evaluation(units, build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, embedder=memory.embedder,
                          source=memory, out_dir=out, config=config, resume=True, progress=False)
    assert done.complete and table(done) == table(local)
    assert nll_by_key(lines(out / "results.jsonl")) == reference


def test_per_task_cli_on_ray_resumes_a_local_run_and_equals_one_process(cluster, cli, memory, tmp_path, capsys,
                                                                        monkeypatch):
    common = ["--memory", memory.uri, "--split", "test", "--methods", "base", "knn", "hullft", "--n", "2", "3",
              "--k", "8", "--unit-size", "4", "--lr", "0.01", "--max-length", "32", "--bootstrap", "50",
              "--mode", "per_task", "--no-progress", "--no-plots"]
    full, out = tmp_path / "full", tmp_path / "out"
    assert cli("eval", *common, "--out", str(full)) == 0
    with monkeypatch.context() as patch:
        interrupt_after(patch, 7)  # base for all 4 units, then 3 of 4 of the knn N=2 sequence
        assert cli("eval", *common, "--out", str(out)) == 130
    assert len(read_results(out / "results.jsonl")[0]) == 7
    capsys.readouterr()

    assert cli("eval", *common, "--out", str(out), "--resume", "--ray", "auto", "--ray-workers", "2") == 0
    assert "Ray auto" in capsys.readouterr().out
    ray_summary, full_summary = (json.loads((d / "summary.json").read_text()) for d in (out, full))
    assert ray_summary["complete"] and rows(ray_summary) == rows(full_summary)
    for group, rows_ in full_summary["by_group"].items():
        assert [(r["method"], r["n"], r["bpb"], r["ci"]) for r in rows_] == \
            [(r["method"], r["n"], r["bpb"], r["ci"]) for r in ray_summary["by_group"][group]]
    assert nll_by_key(lines(out / "results.jsonl")) == nll_by_key(lines(full / "results.jsonl"))


# ---------------------------------------------------------------------------------------- sharding, errors


def test_per_task_shards_keep_each_tasks_units_together_and_in_order():
    units = text_units([{"id": f"u{i}", "text": f"text {i}", "task": "ab"[i % 2]} for i in range(4)])
    jobs = [(i, "base", 0) for i in range(4)] + [(i, m, 2) for m in ("knn", "hullft") for i in range(4)]
    items = shard_jobs(units, jobs, "per_task")
    chains = [item for item in items if item[0][1] != "base"]
    assert sorted(chains) == [[(0, "hullft", 2), (2, "hullft", 2)], [(0, "knn", 2), (2, "knn", 2)],
                              [(1, "hullft", 2), (3, "hullft", 2)], [(1, "knn", 2), (3, "knn", 2)]]
    assert sorted(j for item in items for j in item) == sorted(jobs)
    assert all(len(item) == 1 for item in shard_jobs(units, jobs, "per_query"))
    assert [item[0] for item in shard_jobs(units, jobs, "per_query")] == jobs  # run order


def test_missing_ray_and_an_unreachable_address_say_what_to_do(memory, tmp_path, cli, capsys, monkeypatch):
    units = episode_units(memory, split="test", unit_size=4)
    kwargs = {"model": partial(tiny_pair, None), "embedder": partial(HashingEmbedder, 32),
              "source": MemorySource.of(memory), "progress": False}
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
        with pytest.raises(RayUnavailableError, match=r'pip install "hullft-agent\[ray\]"'):
            run_evaluation_ray(units, out_dir=tmp_path / "a", **kwargs)
    with pytest.raises(RayUnavailableError, match=r"cannot connect to the Ray cluster at '127\.0\.0\.1:1'"):
        run_evaluation_ray(units, out_dir=tmp_path / "b", ray_address="127.0.0.1:1", **kwargs)
    with pytest.raises(ValueError, match="expected auto, local, HOST:PORT"):
        run_evaluation_ray(units, out_dir=tmp_path / "c", ray_address="headnode", **kwargs)
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        run_evaluation_ray(units, out_dir=tmp_path / "d", workers=0, **kwargs)

    rc = cli("eval", "--memory", memory.uri, "--split", "test", "--methods", "base", "--out", str(tmp_path / "e"),
             "--no-progress", "--ray", "127.0.0.1:1")
    assert rc == 2 and "127.0.0.1:1" in capsys.readouterr().err
