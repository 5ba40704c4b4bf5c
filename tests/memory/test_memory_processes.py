"""The trajectory memory across processes: concurrent writers (rows and step numbers), writers killed
mid-batch or mid-episode, readers in other processes, and the same code against an S3-compatible object
store (moto, on 127.0.0.1) shared by several processes."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from hullft_agent.errors import DuplicateStepError, InvalidStepError
from hullft_agent.memory import ALL_NAMESPACES, MemoryPinnedError, Step, TrajectoryMemory
from hullft_agent.memory.testing import HashingEmbedder

ROOT = Path(__file__).resolve().parents[2]
DIM = 16

# A writer process: opens the memory, waits for a start signal, appends batches of steps with
# known ids and precomputed vectors, and records each committed batch in a progress file.
WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    import numpy as np
    from hullft_agent.memory import Step, TrajectoryMemory
    from hullft_agent.memory.testing import HashingEmbedder

    cfg = json.loads(sys.argv[1])
    mem = TrajectoryMemory.open(embedder=HashingEmbedder(cfg["dim"]), **cfg["memory"])
    rng = np.random.default_rng(cfg["seed"])
    kill = cfg.get("kill_in_add")
    if kill:  # SIGKILL this process from inside the table append of batch kill["batch"]
        import signal, threading
        table, original, calls = mem.table, mem.table.add, []

        def add(data, *args, **kwargs):
            calls.append(1)
            if len(calls) > kill["batch"]:
                threading.Timer(kill["delay"], os.kill, (os.getpid(), signal.SIGKILL)).start()
            return original(data, *args, **kwargs)

        table.add = add
    progress = open(cfg["progress"], "a")
    progress.write("ready\\n"); progress.flush()
    while cfg.get("start") and not os.path.exists(cfg["start"]):
        time.sleep(0.005)
    for b in range(cfg["batches"]):
        n = cfg["batch"]
        steps = [
            Step("observation", f"{cfg['name']} batch {b} row {i} " + cfg.get("pad", ""), f"{cfg['name']}-ep{b}", i,
                 id=f"{cfg['name']}-{b}-{i}")
            for i in range(n)
        ]
        mem.add(steps, vectors=rng.standard_normal((n, cfg["dim"])).astype("float32"))
        progress.write(f"{b}\\n"); progress.flush(); os.fsync(progress.fileno())
    progress.write("done\\n"); progress.flush()
    """
)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["RUST_LOG"] = "error"
    return env


def _spawn(
    name: str, tmp_path: Path, memory: dict, *, batches: int, batch: int, start: Path | None = None, **extra
):
    progress = tmp_path / f"{name}.progress"
    cfg = {
        "name": name,
        "dim": DIM,
        "seed": abs(hash(name)) % 1000,
        "memory": memory,
        "progress": str(progress),
        "batches": batches,
        "batch": batch,
        "start": str(start) if start else None,
        **extra,
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, json.dumps(cfg)],
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return proc, progress


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _finish(proc: subprocess.Popen, timeout: float = 60) -> None:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, err.decode()[-3000:]


def test_two_processes_appending_concurrently_lose_nothing(tmp_path):
    uri = str(tmp_path / "mem")
    TrajectoryMemory.open(uri, embedder=HashingEmbedder(DIM))  # create the table up front
    start = tmp_path / "start"
    # optimize_every makes both writers also compact while the other appends
    memory = {"uri": uri, "namespace": "shared", "optimize_every": 10}
    procs = [_spawn(n, tmp_path, memory, batches=30, batch=100, start=start) for n in ("a", "b")]
    _wait_for(lambda: all("ready" in _lines(p) for _, p in procs), 60, "writers to start")
    start.touch()
    for proc, _ in procs:
        _finish(proc)
    mem = TrajectoryMemory.open(uri, embedder=HashingEmbedder(DIM), namespace="shared")
    assert mem.count() == 2 * 30 * 100
    ids = set(mem.table.search().select(["id"]).to_arrow()["id"].to_pylist())
    assert ids == {f"{n}-{b}-{i}" for n in "ab" for b in range(30) for i in range(100)}
    assert len(mem.episodes()) == 60


def test_a_writer_killed_mid_batch_leaves_every_committed_step(tmp_path):
    uri = str(tmp_path / "mem")
    TrajectoryMemory.open(uri, embedder=HashingEmbedder(DIM))
    batch = 5000
    # the writer SIGKILLs itself 10 ms into the 4th table append (while its data files are written)
    proc, progress = _spawn(
        "k",
        tmp_path,
        {"uri": uri},
        batches=100,
        batch=batch,
        pad="x" * 4000,
        kill_in_add={"batch": 3, "delay": 0.01},
    )
    try:
        proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    committed = [int(x) for x in _lines(progress) if x.isdigit()]
    assert committed == [0, 1, 2]
    mem = TrajectoryMemory.open(uri, embedder=HashingEmbedder(DIM))
    rows = mem.count()
    # every reported batch is there, whole; the killed batch is all or nothing (nothing, usually)
    assert rows in (3 * batch, 4 * batch)
    ids = set(mem.table.search().select(["id"]).to_arrow()["id"].to_pylist())
    assert {f"k-{b}-{i}" for b in committed for i in range(batch)} <= ids and len(ids) == rows
    # the table stays fully usable: query, append, compact
    assert len(mem.candidates(np.ones(DIM), 5)) == 5
    mem.log_step("after", "action", "still writable")
    mem.optimize()
    assert mem.count() == rows + 1


def test_a_reader_in_another_process_sees_new_steps_within_the_interval(tmp_path):
    uri = str(tmp_path / "mem")
    writer = TrajectoryMemory.open(uri, embedder=HashingEmbedder(DIM))
    writer.log_step("e0", "action", "first")
    fresh = TrajectoryMemory.open(uri, embedder=HashingEmbedder(DIM), read_consistency_interval=0.2)
    frozen = TrajectoryMemory.open(uri, embedder=HashingEmbedder(DIM), read_consistency_interval=None)
    assert fresh.count() == frozen.count() == 1
    proc, progress = _spawn("w", tmp_path, {"uri": uri, "namespace": "default"}, batches=2, batch=50)
    _finish(proc)
    time.sleep(0.3)
    assert fresh.count() == 101  # re-checked after the 0.2 s interval
    assert frozen.count() == 1  # read_consistency_interval=None: never re-checks on its own
    frozen.refresh()
    assert frozen.count() == 101
    # a pinned reader keeps its snapshot whatever others write
    fresh.checkout(fresh.version)
    writer.log_step("e0", "action", "second")
    time.sleep(0.3)
    assert fresh.count() == 101
    with pytest.raises(MemoryPinnedError):
        fresh.log_step("e0", "action", "x")


# ------------------------------------------------------------------------------- step numbers


def _log_into_one_episode(uri: str, name: str, n: int, barrier, results) -> None:
    """A writer: n steps with automatic numbers, then (once every writer is done) step 10_000."""
    try:
        mem = TrajectoryMemory.open(uri, embedder=HashingEmbedder(DIM), namespace="shared")
        barrier.wait(60)
        for i in range(n):
            mem.log_step("one-episode", "action", f"{name} step {i}")
        barrier.wait(60)  # every automatic step is in: the explicit one does not move their numbers
        try:
            mem.log_step("one-episode", "observation", f"{name} explicit", step=10_000)
            results.put((name, "logged"))
        except DuplicateStepError:
            results.put((name, "duplicate"))
    except Exception as exc:  # reported to the test, which fails with it
        results.put((name, f"error {exc!r}"))


def test_processes_logging_into_one_episode_never_share_a_step_number(tmp_path):
    uri = str(tmp_path / "mem")
    TrajectoryMemory.open(uri, embedder=HashingEmbedder(DIM))
    ctx = multiprocessing.get_context("spawn")  # never fork a process that runs lance's threads
    n, names = 30, ["w1", "w2", "test"]  # two worker processes and this one
    barrier, results = ctx.Barrier(len(names)), ctx.Queue()
    procs = [
        ctx.Process(target=_log_into_one_episode, args=(uri, name, n, barrier, results))
        for name in names[:-1]
    ]
    for proc in procs:
        proc.start()
    try:
        _log_into_one_episode(uri, names[-1], n, barrier, results)
        outcomes = dict(results.get(timeout=120) for _ in names)
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    assert sorted(outcomes.values()) == ["duplicate"] * (len(names) - 1) + ["logged"], outcomes
    steps = sorted(TrajectoryMemory.open(uri).table.to_arrow()["step"].to_pylist())
    assert steps == [*range(len(names) * n), 10_000]


def test_an_explicit_step_number_is_taken_once(tmp_path):
    emb = HashingEmbedder(DIM)
    mem = TrajectoryMemory.open(tmp_path / "mem", embedder=emb)
    mem.log_step("e", "action", "first", step=0)
    with pytest.raises(DuplicateStepError, match="step 0 of episode 'e'"):
        mem.log_step("e", "action", "again", step=0)
    other = TrajectoryMemory.open(tmp_path / "mem", embedder=emb)  # its own caches
    with pytest.raises(DuplicateStepError) as info:
        other.log_episode("e", [Step("action", "new", step=5), Step("action", "old", step=0)])
    assert info.value.index == 1 and isinstance(info.value, InvalidStepError)
    assert mem.count() == 1
    other.log_step("e", "action", "gap filled", step=3)
    assert other.get(other.log_step("e", "action", "next"))["step"] == 4


# ------------------------------------------------------------------------------- atomic episodes

# Logs episodes of `steps` rows (chunks of `chunk` rows) until killed; reports each one logged.
EPISODE_WRITER = textwrap.dedent(
    """
    import json, os, signal, sys, threading
    import numpy as np
    from hullft_agent.memory import Step, TrajectoryMemory
    from hullft_agent.memory.testing import HashingEmbedder

    cfg = json.loads(sys.argv[1])
    mem = TrajectoryMemory.open(cfg["uri"], embedder=HashingEmbedder(cfg["dim"]),
                                write_batch_size=cfg["chunk"], optimize_every=0)
    if cfg["kill_at_add"]:  # SIGKILL this process 5 ms into its n-th table append
        table, original, calls = mem.table, mem.table.add, []

        def add(data, *args, **kwargs):
            calls.append(1)
            if len(calls) == cfg["kill_at_add"]:
                threading.Timer(0.005, os.kill, (os.getpid(), signal.SIGKILL)).start()
            return original(data, *args, **kwargs)

        table.add = add
    rng = np.random.default_rng(cfg["seed"])
    progress = open(cfg["progress"], "a")
    progress.write("ready\\n"); progress.flush()
    for e in range(10_000):
        vectors = rng.standard_normal((cfg["steps"], cfg["dim"])).astype("float32")
        mem.log_episode(f"{cfg['name']}-{e}", [Step("action", f"step {i}", vector=v) for i, v in enumerate(vectors)])
        progress.write(f"{e}\\n"); progress.flush()
    """
)


def test_an_episode_lands_whole_or_not_at_all_under_sigkill(tmp_path):
    uri = str(tmp_path / "mem")
    TrajectoryMemory.open(uri, embedder=HashingEmbedder(DIM))
    steps, chunk = 1500, 500  # more rows than write_batch_size
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    writers = {}
    for name, kill_at_add in (("hooked", 2), ("random", 0)):
        progress = tmp_path / f"{name}.progress"
        cfg = {
            "uri": uri,
            "dim": DIM,
            "name": name,
            "steps": steps,
            "chunk": chunk,
            "seed": len(writers),
            "kill_at_add": kill_at_add,
            "progress": str(progress),
        }
        proc = subprocess.Popen(
            [sys.executable, "-c", EPISODE_WRITER, json.dumps(cfg)],
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        writers[name] = (proc, progress)
    reader = TrajectoryMemory.open(uri, read_consistency_interval=0)
    try:
        _wait_for(lambda: all("ready" in _lines(p) for _, p in writers.values()), 60, "writers to start")
        start = time.monotonic()
        kill_at = {"random": start + rng.uniform(0.05, 1.5)}
        while any(proc.poll() is None for proc, _ in writers.values()):
            now = time.monotonic()
            for name, when in kill_at.items():
                if now >= when and writers[name][0].poll() is None:
                    writers[name][0].send_signal(signal.SIGKILL)
            sizes = {e.episode_id: e.rows for e in reader.episodes()}
            assert set(sizes.values()) <= {steps}, f"a partial episode is visible (seed {seed}): {sizes}"
            assert now - start < 60, "the writers did not die"
            time.sleep(0.01)
    finally:
        for proc, _ in writers.values():
            proc.kill()
            proc.communicate()
    for proc, _ in writers.values():
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    reader.refresh()
    sizes = {e.episode_id: e.rows for e in reader.episodes()}
    assert set(sizes.values()) <= {steps}, f"a partial episode is left (seed {seed}): {sizes}"
    reported = {f"{name}-{e}" for name, (_, p) in writers.items() for e in _lines(p) if e.isdigit()}
    assert reported <= set(sizes) and "hooked-0" in sizes
    assert TrajectoryMemory.open(uri, embedder=HashingEmbedder(DIM)).log_episode("after", [("action", "ok")])


# ------------------------------------------------------------------------------- object store


def test_the_same_memory_on_an_s3_compatible_store(s3_server, tmp_path, capsys):
    emb = HashingEmbedder(DIM)
    uri = "s3://agents/memory"
    one = TrajectoryMemory.open(uri, embedder=emb, namespace="worker-1", storage_options=s3_server)
    one.log_episode("ep1", [("observation", "You are in a kitchen."), ("action", "open fridge")], task="cook")
    snapshot = one.version
    # another worker (another process) shares the memory through the bucket, concurrently
    memory = {"uri": uri, "namespace": "worker-2", "storage_options": s3_server}
    start = tmp_path / "start"
    procs = [_spawn(n, tmp_path, memory, batches=5, batch=40, start=start) for n in ("p", "q")]
    _wait_for(lambda: all("ready" in _lines(p) for _, p in procs), 60, "writers to start")
    start.touch()
    for proc, _ in procs:
        _finish(proc)
    one.refresh()
    assert one.count() == 2 and one.count("worker-2") == 400 and one.count(ALL_NAMESPACES) == 402
    ids = set(one.table.search().where("namespace = 'worker-2'").select(["id"]).to_arrow()["id"].to_pylist())
    assert ids == {f"{n}-{b}-{i}" for n in "pq" for b in range(5) for i in range(40)}
    pool = one.candidates(
        context="open the fridge", k=10, where="1=1 OR namespace = 'worker-2'", fields="all"
    )
    assert len(pool) == 2 and pool.texts[0] == "open fridge"
    assert {m["namespace"] for m in pool.metadata} == {"worker-1"}
    with one.pinned_to(snapshot):
        assert one.count(ALL_NAMESPACES) == 2
    assert one.forget(episode_id="ep1") == 2
    one.optimize()
    two = TrajectoryMemory.open(uri, embedder=emb, namespace="worker-2", storage_options=s3_server)
    assert two.count() == 400 and two.stats()["disk_bytes"] > 0
    # the CLI reaches the same bucket with --storage-option
    from hullft_agent.memory.cli import add_memory_commands

    parser = argparse.ArgumentParser()
    add_memory_commands(parser.add_subparsers(dest="command"))
    options = [f"--storage-option={k}={v}" for k, v in s3_server.items()]
    args = parser.parse_args(["memory", "stats", "--json", "--uri", uri, "--namespace", "worker-2", *options])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 400
    args = parser.parse_args(["memory", "stats", "--uri", uri, "--storage-option", "no-equals-sign"])
    assert args.func(args) == 2

