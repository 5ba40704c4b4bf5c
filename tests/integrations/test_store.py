"""LanceDBStore beyond the differential suite: tenants, bad input, persistence, TTL sweeps, LangGraph
graphs (sync and async), and store items as the adapter's candidates."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import TypedDict

import numpy as np
import pytest
from conftest import build_tiny_model
from langchain_core.messages import HumanMessage
from langchain_hullft import ChatHullFT, LanceDBStore, get_adaptation_report
from langchain_hullft.store import STORE_KIND
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore, GetOp, InvalidNamespaceError, ListNamespacesOp, PutOp, SearchOp

from hullft_agent import AdapterConfig, FinetuneConfig, LoRAConfig, SelectionConfig, TestTimeAdapter
from hullft_agent.config import LearnFrom
from hullft_agent.errors import EmbedderMismatchError, NotAMemoryTableError
from hullft_agent.memory import TrajectoryMemory
from hullft_agent.memory.testing import HashingEmbedder

DIM = 32


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 2, 9, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def open_store(path, tenant: str = "agent-1", **kwargs) -> LanceDBStore:
    kwargs.setdefault("index", {"embed": HashingEmbedder(DIM)})
    return LanceDBStore(path, namespace=tenant, **kwargs)


def test_items_persist_and_an_overwrite_keeps_its_creation_time(tmp_path):
    clock = Clock()
    store = open_store(tmp_path, clock=clock)
    store.put(("users", "u1"), "prefs", {"theme": "dark", "text": "likes dark mode"})
    clock.now += timedelta(minutes=3)
    store.put(("users", "u1"), "prefs", {"theme": "light", "text": "likes light mode"})
    reopened = open_store(tmp_path)
    item = reopened.get(("users", "u1"), "prefs")
    assert item.value == {"theme": "light", "text": "likes light mode"}
    assert item.created_at == datetime(2026, 12, 2, 9, 0, tzinfo=timezone.utc)
    assert item.updated_at == item.created_at + timedelta(minutes=3)
    assert reopened.count() == 1 and reopened.table.count_rows() == 1
    reopened.delete(("users", "u1"), "prefs")
    assert store.get(("users", "u1"), "prefs") is None and store.count() == 0


def test_one_batch_is_one_commit_and_its_reads_see_its_writes(tmp_path):
    store = open_store(tmp_path)
    store.put(("a",), "old", {"text": "gone soon"})
    version = store.table.version
    results = store.batch([PutOp(("a",), "x", {"text": "one"}), PutOp(("a",), "x", {"text": "two"}),
                           PutOp(("a",), "old", None), GetOp(("a",), "x"), GetOp(("a",), "old"),
                           SearchOp(("a",)), ListNamespacesOp()])
    assert store.table.version == version + 1  # the puts and the delete landed in one commit
    assert results[:3] == [None, None, None]
    assert results[3].value == {"text": "two"} and results[4] is None  # the last put of a key wins
    assert [i.key for i in results[5]] == ["x"] and results[6] == [("a",)]


HOSTILE = ["x' OR tenant = 'agent-1", "'; DROP TABLE langgraph_store; --", "%", "_", "*", "it's", 'say "hi"',
           "agent-1", "ünï 🙂", "a\\b"]


def test_a_tenant_never_reads_or_writes_another_tenants_items(tmp_path):
    clock = Clock()
    mine = open_store(tmp_path, "agent-1", clock=clock, ttl={"default_ttl": 1.0})
    mine.put(("memories",), "k", {"text": "agent one's secret"})
    mine.put(("agent-1",), "k", {"text": "another secret"})
    theirs = open_store(tmp_path, "agent-2", clock=clock)
    for label in HOSTILE:
        for ns in ((label,), ("memories", label), (label, "memories")):
            theirs.put(ns, "k", {"text": f"written by agent two under {label}"})
            assert theirs.get(ns, "k").value["text"].startswith("written by agent two")
        for ns in ((label,), ("memories", label), (label, "memories")):
            assert "agent two" not in str(mine.get(ns, "k", refresh_ttl=False))
        assert not any("agent two" in str(i.value) for i in mine.search((label,), limit=100, refresh_ttl=False))
    assert theirs.get(("memories",), "k") is None
    assert theirs.get(("agent-1",), "k").value["text"] == "written by agent two under agent-1"
    theirs.delete(("memories",), "k")  # the same namespace and key as agent one's item: deletes nothing of it
    theirs.batch([PutOp(("agent-1",), "k", None)])  # its own item of that name
    clock.now += timedelta(minutes=5)  # agent one's items have expired, not agent two's concern
    assert theirs.sweep_ttl() == 0
    assert {ns[0] for ns in theirs.list_namespaces(max_depth=1)} == set(HOSTILE) | {"memories"}
    assert mine.list_namespaces() == [("agent-1",), ("memories",)]
    assert [i.value["text"] for i in mine.search((), limit=10, refresh_ttl=False)] == ["another secret",
                                                                                        "agent one's secret"]
    query = HashingEmbedder(DIM).encode("secret")
    assert all(i.startswith("store:") for i in theirs.as_candidate_source().candidates(query, 50).ids)
    assert not any("one" in t for t in theirs.as_candidate_source().candidates(query, 50).texts)
    assert mine.sweep_ttl() == 2 and mine.count() == 0 and theirs.count() == 3 * len(HOSTILE) - 1


def test_labels_with_like_wildcards_and_quotes_match_only_themselves(tmp_path):
    store = open_store(tmp_path)
    for ns in [("a_b",), ("axb",), ("a%",), ("a%", "c"), ("abc",), ("it's", 'say "hi"'), ("a_b", "deeper")]:
        store.put(ns, "k", {"ns": list(ns)})
    assert sorted(i.namespace for i in store.search(("a_b",))) == [("a_b",), ("a_b", "deeper")]
    assert sorted(i.namespace for i in store.search(("a%",))) == [("a%",), ("a%", "c")]
    assert store.get(("it's", 'say "hi"'), "k").value == {"ns": ["it's", 'say "hi"']}
    assert store.list_namespaces(prefix=("it's",)) == [("it's", 'say "hi"')]
    assert store.list_namespaces(suffix=("c",)) == [("a%", "c")]


BAD_INPUT = [
    ("a label that is not a string", lambda s: s.put(("a", 1), "k", {}), InvalidNamespaceError),
    ("an empty namespace", lambda s: s.put((), "k", {}), InvalidNamespaceError),
    ("a label with a dot", lambda s: s.put(("a.b",), "k", {}), InvalidNamespaceError),
    ("an empty label", lambda s: s.put(("a", ""), "k", {}), InvalidNamespaceError),
    ("the reserved root", lambda s: s.put(("langgraph",), "k", {}), InvalidNamespaceError),
    ("a list namespace", lambda s: s.batch([PutOp(["a"], "k", {})]), InvalidNamespaceError),
    ("a dot through batch()", lambda s: s.batch([PutOp(("a.b",), "k", {})]), InvalidNamespaceError),
    ("a dot in a search prefix", lambda s: s.search(("a.b",)), InvalidNamespaceError),
    ("a None label in a get", lambda s: s.get(("a", None), "k"), InvalidNamespaceError),
    ("a lone surrogate label", lambda s: s.put(("\ud800",), "k", {}), InvalidNamespaceError),
    ("a set in the value", lambda s: s.put(("a",), "k", {"x": {1, 2}}), ValueError),
    ("bytes in the value", lambda s: s.put(("a",), "k", {"x": b"raw"}), ValueError),
    ("an object in the value", lambda s: s.put(("a",), "k", {"x": object()}), ValueError),
    ("NaN in the value", lambda s: s.put(("a",), "k", {"x": float("nan")}), ValueError),
    ("an int key in the value", lambda s: s.put(("a",), "k", {"x": {1: "a"}}), ValueError),
    ("a value that is not a dict", lambda s: s.put(("a",), "k", "text"), TypeError),
    ("a key that is not a string", lambda s: s.batch([GetOp(("a",), 5)]), TypeError),
    ("a negative ttl", lambda s: s.put(("a",), "k", {}, ttl=-1), ValueError),
    ("an unknown operator", lambda s: s.search(("a",), filter={"x": {"$regex": "a"}}), ValueError),
    ("a mixed operator dict", lambda s: s.search(("a",), filter={"x": {"$gt": 1, "y": 2}}), ValueError),
    ("a negative limit", lambda s: s.search(("a",), limit=-1), ValueError),
    ("max_depth 0", lambda s: s.list_namespaces(max_depth=0), ValueError),
    ("not an op", lambda s: s.batch(["get everything"]), TypeError),
]


@pytest.mark.parametrize(("what", "call", "error"), BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_input_raises_and_writes_nothing(tmp_path, what, call, error):
    store = open_store(tmp_path, index=False)
    version = store.table.version
    with pytest.raises(error):
        call(store)
    assert store.table.version == version and store.count() == 0


BAD_OPS = [PutOp(("a", 1), "k", {}), PutOp((), "k", {}), PutOp(("a.b",), "k", {}), PutOp(("a",), "k", {"x": {1}}),
           PutOp(("a",), "k", {"x": float("inf")}), PutOp(("a",), "k", {}, ttl=0), PutOp(("a",), "k", {}, index="text"),
           GetOp(("a",), None), SearchOp(("a",), filter={"x": {"$in": [1]}}), SearchOp(("a",), limit=1.5),
           ListNamespacesOp(max_depth=-1)]


@pytest.mark.parametrize("bad", BAD_OPS, ids=[f"{type(op).__name__}-{i}" for i, op in enumerate(BAD_OPS)])
def test_one_bad_op_refuses_its_whole_batch(tmp_path, bad):
    store = open_store(tmp_path, index=False)
    version = store.table.version
    with pytest.raises((ValueError, TypeError)):
        store.batch([PutOp(("ok",), "k", {"v": 1}), GetOp(("ok",), "k"), bad])
    assert store.table.version == version and store.count() == 0


def test_reopening_with_another_embedder_or_table_kind_is_refused(tmp_path):
    open_store(tmp_path).put(("a",), "k", {"text": "x"})
    with pytest.raises(EmbedderMismatchError):
        open_store(tmp_path, index={"embed": HashingEmbedder(DIM + 1)})
    keyless = open_store(tmp_path, index=False)  # a key-value view of an indexed table is fine
    keyless.put(("a",), "plain", {"text": "no vector"})
    assert [i.key for i in open_store(tmp_path).search(("a",), query="x")] == ["k", "plain"]
    open_store(tmp_path / "kv", index=False).put(("a",), "k", {})
    with pytest.raises(EmbedderMismatchError):
        open_store(tmp_path / "kv")
    TrajectoryMemory.open(tmp_path / "mem", embedder=HashingEmbedder(DIM)).log_step("ep", "action", "go")
    with pytest.raises(NotAMemoryTableError):
        open_store(tmp_path / "mem", table="trajectories")


def test_ttl_refresh_per_read_and_the_sweeper_thread(tmp_path):
    clock = Clock()
    store = open_store(tmp_path, clock=clock, ttl={"default_ttl": 1.0, "refresh_on_read": True})
    store.put(("t",), "read", {"text": "kept alive by reads"})
    store.put(("t",), "peeked", {"text": "read without refreshing"})
    store.put(("t",), "forever", {"text": "no ttl"}, ttl=None)
    clock.now += timedelta(seconds=50)
    assert store.get(("t",), "read") is not None
    assert store.get(("t",), "peeked", refresh_ttl=False) is not None
    clock.now += timedelta(seconds=20)
    assert store.sweep_ttl() == 1 and store.get(("t",), "peeked") is None
    future = store.start_ttl_sweeper(sweep_interval_minutes=0.001)
    clock.now += timedelta(minutes=5)
    deadline = time.monotonic() + 20
    while store.count() > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [i.key for i in store.search(("t",))] == ["forever"]
    assert store.stop_ttl_sweeper(timeout=10) and future.done()


class State(TypedDict):
    user: str
    fact: str
    recalled: list[str]


def _graph(store: BaseStore, *, asynchronous: bool):
    if asynchronous:
        async def save(state: State, *, store: BaseStore) -> dict:
            await store.aput(("memories", state["user"]), f"fact-{len(state['fact'])}", {"text": state["fact"]})
            return {}

        async def recall(state: State, *, store: BaseStore) -> dict:
            found = await store.asearch(("memories", state["user"]), query="what does the user drink", limit=2)
            return {"recalled": [i.value["text"] for i in found]}
    else:
        def save(state: State, *, store: BaseStore) -> dict:
            store.put(("memories", state["user"]), f"fact-{len(state['fact'])}", {"text": state["fact"]})
            return {}

        def recall(state: State, *, store: BaseStore) -> dict:
            found = store.search(("memories", state["user"]), query="what does the user drink", limit=2)
            return {"recalled": [i.value["text"] for i in found]}

    builder = StateGraph(State)
    builder.add_node("save", save)
    builder.add_node("recall", recall)
    builder.add_edge(START, "save")
    builder.add_edge("save", "recall")
    builder.add_edge("recall", END)
    return builder.compile(store=store)


def test_a_sync_graph_uses_the_store(tmp_path):
    graph = _graph(open_store(tmp_path), asynchronous=False)
    graph.invoke({"user": "u1", "fact": "the user drinks green tea", "recalled": []})
    out = graph.invoke({"user": "u1", "fact": "the user owns a red bicycle", "recalled": []})
    assert out["recalled"][0] == "the user drinks green tea"
    assert open_store(tmp_path).search(("memories",), limit=10) != []  # persisted


@pytest.mark.asyncio
async def test_an_async_graph_uses_the_store_with_an_async_embedder(tmp_path):
    hashing = HashingEmbedder(DIM)
    calls: list[int] = []

    async def embed(texts):
        calls.append(len(texts))
        return [v.tolist() for v in hashing.encode(list(texts))]

    store = LanceDBStore(tmp_path, namespace="agent-1", index={"dims": DIM, "embed": embed})
    graph = _graph(store, asynchronous=True)
    await graph.ainvoke({"user": "u2", "fact": "the user drinks black coffee", "recalled": []})
    out = await graph.ainvoke({"user": "u2", "fact": "the user lives in Lyon", "recalled": []})
    assert out["recalled"] == ["the user drinks black coffee", "the user lives in Lyon"] and calls
    with pytest.raises(ValueError, match="async function"):  # LangGraph's EmbeddingsLambda: async-only
        store.put(("memories", "u2"), "sync", {"text": "needs a sync embedder"})
    assert [i.key for i in await store.asearch(("memories", "u2"), query="coffee", limit=1)] == ["fact-28"]


# ------------------------------------------------------------------------------ the adapter


def adapter_config(**learn_from) -> AdapterConfig:
    return AdapterConfig(
        selection=SelectionConfig(n=4, k=8),
        finetune=FinetuneConfig(lr=1e-2, max_length=32, lora=LoRAConfig(r=4, alpha=8)),
        learn_from=LearnFrom(**learn_from) if learn_from else None,
    )


@pytest.fixture()
def memory_and_store(tmp_path):
    emb = HashingEmbedder(DIM)
    memory = TrajectoryMemory.open(tmp_path, embedder=emb, namespace="agent-1")
    memory.log_episode("ep-1", [("observation", "You are in a kitchen with a fridge."), ("action", "open fridge")],
                       task="cook")
    store = LanceDBStore.from_memory(memory)
    store.put(("memories", "cook"), "knife", {"text": "the knife is in the drawer next to the stove"})
    store.put(("memories", "cook"), "tea", {"text": "the user drinks green tea"})
    store.put(("memories", "garden"), "shovel", {"text": "the shovel is in the shed"})
    return memory, store


def test_store_items_are_candidates_and_the_report_names_them(memory_and_store, tiny_model, tiny_tokenizer):
    memory, store = memory_and_store
    source = store.as_candidate_source(("memories",), memory=memory)
    adapter = TestTimeAdapter(tiny_model, tiny_tokenizer, embedder=memory.embedder, source=source,
                              config=adapter_config())
    report = adapter.adapt("where is the knife? it is in the drawer", episode_id="ep-2")
    assert not report.skipped and report.steps > 0
    chosen = [i for i in source.items(report.selected_ids) if i is not None]
    assert ("memories", "cook") in {i.namespace for i in chosen}
    assert any(i.startswith("store:") for i in report.selected_ids)
    pool = source.candidates(memory.embedder.encode("the knife in the drawer"), 8)
    assert pool.metadata[0]["kind"] == STORE_KIND and pool.metadata[0]["key"] == "knife"
    assert "knife" in pool.texts[0] and any(not i.startswith("store:") for i in pool.ids)  # memory rows too
    assert list(pool.similarities) == sorted(pool.similarities, reverse=True)
    only_store = adapter.adapt("the knife", episode_id="ep-2", overrides={"learn_from": LearnFrom(kinds=["store"])})
    assert only_store.selected_ids and all(i.startswith("store:") for i in only_store.selected_ids)
    no_store = adapter.adapt("the knife", episode_id="ep-2", overrides={"learn_from": LearnFrom(kinds=["action"])})
    assert no_store.selected_ids and not any(i.startswith("store:") for i in no_store.selected_ids)
    with pytest.raises(ValueError, match="where"):
        source.candidates(memory.embedder.encode("knife"), 8, learn_from=LearnFrom(where="kind = 'action'"))


def test_candidates_follow_tasks_overwrites_and_expiry(memory_and_store):
    memory, store = memory_and_store
    source = store.as_candidate_source(("memories",))
    query = memory.embedder.encode("the shovel is in the shed")
    assert {m["key"] for m in source.candidates(query, 10, task="cook").metadata} == {"knife", "tea"}
    assert [m["key"] for m in source.candidates(query, 10, task="garden").metadata] == ["shovel"]
    assert len(source.candidates(query, 10, task="no.such.label")) == 0
    before = source.candidates(query, 1).ids[0]
    store.put(("memories", "garden"), "shovel", {"text": "the shovel went back to the shed"}, ttl=1.0)
    after = source.candidates(query, 1).ids[0]
    assert before != after and before.split("@")[0] == after.split("@")[0]  # same item, a new version
    assert source.items([before, after, "ep-1-row"])[1].value["text"].startswith("the shovel went")
    store._clock = lambda: datetime.now(timezone.utc) + timedelta(minutes=2)  # the shovel memory expired
    assert "shovel" not in {m.get("key") for m in source.candidates(query, 10).metadata}


def test_a_memory_with_another_embedder_cannot_share_a_pool(memory_and_store, tmp_path):
    _, store = memory_and_store
    other = TrajectoryMemory.open(tmp_path / "other", embedder=HashingEmbedder(DIM, model_name="other"))
    with pytest.raises(EmbedderMismatchError):
        store.as_candidate_source(memory=other)
    with pytest.raises(ValueError, match="without an index"):
        LanceDBStore(tmp_path / "kv", index=False).as_candidate_source()


def test_chat_hullft_adapts_on_store_items(memory_and_store, tiny_tokenizer):
    memory, store = memory_and_store
    model = build_tiny_model(len(tiny_tokenizer), max_positions=256)
    source = store.as_candidate_source(("memories",))
    adapter = TestTimeAdapter(model, tiny_tokenizer, embedder=memory.embedder, source=source, config=adapter_config())
    chat = ChatHullFT(adapter=adapter, memory=memory, max_tokens=4, temperature=0.0, model="tiny-llama")
    message = chat.invoke([HumanMessage("Where is the knife? Near the stove?")], config={"configurable":
                                                                                          {"thread_id": "t1"}})
    report = get_adaptation_report(message)
    assert not report.skipped and report.selected_ids
    assert {i.key for i in source.items(report.selected_ids)} <= {"knife", "tea", "shovel"}
    assert np.isclose(sum(report.weights), 1.0)
