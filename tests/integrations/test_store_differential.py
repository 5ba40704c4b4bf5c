"""LanceDBStore against LangGraph's InMemoryStore: the same random sequences of operations (puts,
overwrites, deletes, gets, filtered and semantic searches with pagination, namespace listing, TTL
expiry on an injected clock) must give the same results.

The reference is InMemoryStore plus what it does not do, applied by the harness with the same clock:
TTLs (InMemoryStore has none: the harness deletes an item once a sweep, or with `omit_expired` a read,
finds it expired, and restarts its TTL when a read returns it) and a defined order for results that
have no score (InMemoryStore returns insertion order; the contract is newest first, then namespace
path and key, as LangGraph's Postgres store does). Two InMemoryStore artefacts are normalised away
rather than copied: it keeps listing a namespace after its last item is deleted (or after a get on it),
and an overwrite keeps the old value's vectors (the harness deletes before it re-puts).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
from langchain_hullft.store import LanceDBStore
from langgraph.store.memory import InMemoryStore

from hullft_agent.embedding import Embedder
from hullft_agent.memory.testing import HashingEmbedder

DIM = 64
WORDS = ("fridge potato knife stove garden shovel recipe tea coffee user likes hates morning evening "
         "python rust lance graph memory agent cook north south").split()
LABELS = ("users", "docs", "u1")
TAGS = ("a", "b", "c")
FILTERS = (
    {"tag": "a"},
    {"score": {"$gt": 4}},
    {"score": {"$gte": 2, "$lt": 7}},
    {"tag": {"$ne": "b"}},
    {"nested": {"level": 1}},
    {"score": 3},
    {"tag": {"$eq": "c"}, "score": {"$lte": 5.5}},
    {"flags": [1, 2]},
)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 2, 9, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def hashing_embed(embedder: HashingEmbedder):
    """A plain embedding function for InMemoryStore (independent of the store's own embedder wrapper)."""
    return lambda texts: [v.tolist() for v in embedder.encode(list(texts))]


class Reference:
    """InMemoryStore, plus TTL bookkeeping and the listing order (see the module docstring)."""

    def __init__(self, index: dict | None, clock: Clock, ttl: dict | None) -> None:
        self.store = InMemoryStore(index=index)
        self.clock = clock
        self.ttl = ttl or {}
        self.written: dict[tuple, datetime] = {}  # (namespace, key) -> updated_at
        self.created: dict[tuple, datetime] = {}
        self.expires: dict[tuple, tuple[datetime, float]] = {}
        self.hidden = 0

    def _drop(self, ns: tuple, key: str) -> None:
        self.store.delete(ns, key)
        for book in (self.written, self.created, self.expires):
            book.pop((ns, key), None)

    def hide_expired(self) -> None:
        """With omit_expired an expired item is gone for every read (and a put to its key is a new item)."""
        if self.ttl.get("omit_expired"):
            self.hidden += self.sweep()

    def sweep(self) -> int:
        dead = [k for k, (at, _) in self.expires.items() if at <= self.clock.now]
        for ns, key in dead:
            self._drop(ns, key)
        return len(dead)

    def put(self, ns: tuple, key: str, value: dict, index, ttl: float | None) -> None:
        self.hide_expired()
        created = self.created.get((ns, key), self.clock.now)
        self.store.delete(ns, key)  # InMemoryStore would keep the old value's vectors
        self.store.put(ns, key, value, index=index)
        now = self.clock.now
        self.written[(ns, key)], self.created[(ns, key)] = now, created
        self.expires.pop((ns, key), None)
        if ttl is not None:
            self.expires[(ns, key)] = (now + timedelta(minutes=ttl), ttl)

    def delete(self, ns: tuple, key: str) -> None:
        self._drop(ns, key)

    def _refresh(self, items) -> None:
        if not self.ttl.get("refresh_on_read", True):
            return
        for item in items:
            entry = self.expires.get((item.namespace, item.key))
            if entry is not None:
                self.expires[(item.namespace, item.key)] = (self.clock.now + timedelta(minutes=entry[1]), entry[1])

    def get(self, ns: tuple, key: str):
        self.hide_expired()
        item = self.store.get(ns, key)
        self._refresh([item] if item else [])
        return item

    def _order(self, item) -> tuple:
        return (-self.written[(item.namespace, item.key)].timestamp(), ".".join(item.namespace), item.key)

    def search(self, prefix: tuple, query: str | None, filter: dict | None, limit: int, offset: int) -> list:
        self.hide_expired()
        full = self.store.search(prefix, query=query, filter=filter, limit=10**6)
        scored = [i for i in full if i.score is not None]
        rest = sorted((i for i in full if i.score is None), key=self._order)
        page = (scored + rest)[offset: offset + limit]
        self._refresh(page)
        return page, scored

    def list_namespaces(self, **kwargs) -> list:
        self.hide_expired()
        data = self.store._data  # drop the namespaces InMemoryStore keeps listing after their last item went
        for ns in [ns for ns, items in data.items() if not items]:
            del data[ns]
        return self.store.list_namespaces(**kwargs)


def random_namespace(rng: random.Random) -> tuple:
    return tuple(rng.choice(LABELS) for _ in range(rng.choice([1, 2, 2, 3])))


def random_value(rng: random.Random) -> dict:
    value = {
        "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))),
        "score": rng.choice([rng.randint(2, 6), rng.randint(2, 6), rng.randint(0, 9) + 0.5]),
        "tag": rng.choice(TAGS),
        "nested": {"level": rng.randint(0, 2), "note": rng.choice(WORDS)},
    }
    if rng.random() < 0.15:
        value["nested"] = rng.choice(["level 1", 1, None, [1]])
    if rng.random() < 0.3:
        value["flags"] = rng.choice([[1, 2], [2, 1], [1]])
    return value


def same_items(ours: list, ref: list, ref_scored: list | None = None) -> None:
    """Equal page: same items in the same order with the same scores; within a run of tied scores any
    order of the tied items is accepted."""
    assert len(ours) == len(ref), (ours, ref)
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert (a.score is None) == (b.score is None), (i, a, b)
        if a.score is not None:
            assert a.score == pytest.approx(b.score, abs=1e-5), (i, a, b)
        if (a.namespace, a.key) != (b.namespace, b.key):
            tied = {(x.namespace, x.key) for x in ref_scored or [] if abs(x.score - a.score) < 1e-5}
            assert a.score is not None and (a.namespace, a.key) in tied, f"position {i}: {a} != {b}"
        else:
            assert a.value == b.value, (i, a, b)


def run_sequence(tmp_path, seed: int, *, fields: list[str] | None, ttl: dict | None, steps: int,
                 index: bool = True) -> dict[str, int]:
    rng = random.Random(seed)
    clock = Clock()
    embedder = HashingEmbedder(DIM)
    ours = LanceDBStore(tmp_path / f"db-{seed}", namespace="tenant", ttl=ttl, clock=clock,
                        index={"embed": embedder, "fields": fields} if index else False)
    ref = Reference({"dims": DIM, "embed": hashing_embed(embedder), "fields": fields} if index else None, clock, ttl)
    keys: set[tuple] = set()
    seen = {"put": 0, "delete": 0, "get": 0, "search": 0, "query": 0, "list": 0, "sweep": 0, "nonempty": 0,
            "expired": 0}
    for _ in range(steps):
        clock.now += timedelta(seconds=rng.choice([0, 0, 1, 5, 20, 45]))
        roll = rng.random()
        if roll < 0.42 or not keys:
            ns, key = (rng.choice(sorted(keys)) if keys and rng.random() < 0.4
                       else (random_namespace(rng), f"k{rng.randint(0, 5)}"))
            value = random_value(rng)
            index_arg = rng.choice([None, None, None, False, ["nested.note"]])
            item_ttl = rng.choice([None, 0.5, 1.0, 2.0]) if ttl else None
            ours.put(ns, key, value, index=index_arg, ttl=item_ttl)
            ref.put(ns, key, value, index_arg, item_ttl)
            keys.add((ns, key))
            seen["put"] += 1
        elif roll < 0.5:
            ns, key = rng.choice(sorted(keys))
            ours.delete(ns, key)
            ref.delete(ns, key)
            seen["delete"] += 1
        elif roll < 0.6:
            ns, key = rng.choice(sorted(keys)) if rng.random() < 0.8 else (random_namespace(rng), "k9")
            a, b = ours.get(ns, key), ref.get(ns, key)
            assert (a is None) == (b is None), (ns, key, a, b)
            if a is not None:
                assert (a.namespace, a.key, a.value) == (b.namespace, b.key, b.value)
                assert a.updated_at == ref.written[(ns, key)] and a.created_at == ref.created[(ns, key)]
            seen["get"] += 1
        elif roll < 0.85:
            prefix = random_namespace(rng)[: rng.choice([0, 1, 1, 2])]
            query = " ".join(rng.choice(WORDS) for _ in range(2)) if rng.random() < 0.5 else None
            filter = rng.choice(FILTERS) if rng.random() < 0.6 else None
            limit, offset = rng.choice([1, 3, 10, 50]), rng.choice([0, 0, 1, 2, 5, 10])
            a = ours.search(prefix, query=query, filter=filter, limit=limit, offset=offset)
            b, scored = ref.search(prefix, query, filter, limit, offset)
            same_items(a, b, scored)
            seen["search"] += 1
            seen["query"] += query is not None
            seen["nonempty"] += bool(a)
        elif roll < 0.95:
            prefix = random_namespace(rng)[: rng.randint(0, 2)] or None
            if prefix and rng.random() < 0.3:
                prefix = ("*", *prefix[1:]) if len(prefix) > 1 else ("*",)
            suffix = (rng.choice(LABELS),) if rng.random() < 0.3 else None
            kwargs = {"prefix": prefix, "suffix": suffix, "max_depth": rng.choice([None, None, 1, 2]),
                      "limit": rng.choice([2, 100]), "offset": rng.choice([0, 0, 1])}
            assert ours.list_namespaces(**kwargs) == ref.list_namespaces(**kwargs), kwargs
            seen["list"] += 1
        elif ttl:
            if not ttl.get("omit_expired"):
                ref_swept = ref.sweep()
                assert ours.sweep_ttl() == ref_swept
                seen["expired"] += ref_swept
            seen["sweep"] += 1
    # the final state, every item of it
    a = ours.search((), limit=1000)
    b, _ = ref.search((), None, None, 1000, 0)
    same_items(a, b)
    assert ours.count() >= len(a)
    seen["expired"] += ref.hidden
    return seen


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_sequences_match_in_memory_store(tmp_path, seed):
    seen = run_sequence(tmp_path, seed, fields=None, ttl=None, steps=150)
    assert seen["query"] >= 10 and seen["delete"] >= 5 and seen["list"] >= 5 and seen["nonempty"] >= 10, seen


def test_several_texts_per_item_rank_by_their_best_text(tmp_path):
    seen = run_sequence(tmp_path, 13, fields=["text", "nested.note", "tag"], ttl=None, steps=120)
    assert seen["query"] >= 8, seen


def test_without_an_index_a_query_is_ignored_as_in_memory_store(tmp_path):
    seen = run_sequence(tmp_path, 4, fields=None, ttl=None, steps=40, index=False)
    assert seen["search"] >= 5, seen


@pytest.mark.parametrize(
    "ttl", [{"refresh_on_read": True, "omit_expired": False}, {"refresh_on_read": False, "omit_expired": True}],
    ids=["refresh-then-sweep", "omit-expired"],
)
def test_ttl_expiry_on_an_injected_clock_matches_the_reference(tmp_path, ttl):
    seen = run_sequence(tmp_path, 5, fields=None, ttl=ttl, steps=120)
    assert seen["expired"] >= 3 and seen["get"] >= 3, seen


def test_semantic_ranking_with_the_packaged_embedder(tmp_path):
    """The real all-MiniLM-L6-v2: the same items, scores and order as InMemoryStore with the same model."""
    embedder = Embedder()
    ours = LanceDBStore(tmp_path, namespace="t", index={"embed": embedder, "fields": ["text"]})
    ref = InMemoryStore(index={"dims": embedder.dim, "embed": hashing_embed(embedder), "fields": ["text"]})
    memories = ["The user prefers green tea in the morning", "The user is allergic to peanuts",
                "Meetings are on Tuesdays at ten", "The user's cat is called Miso",
                "The user drinks espresso after lunch", "Deploys happen on Fridays, rarely"]
    for i, text in enumerate(memories):
        for store in (ours, ref):
            store.put(("memories", "u1"), f"m{i}", {"text": text, "i": i})
    ours.put(("memories", "u2"), "other", {"text": "The user prefers black tea"})
    for query in ("what does the user like to drink?", "pets", "when is the weekly meeting?"):
        a = ours.search(("memories", "u1"), query=query, limit=4)
        b = ref.search(("memories", "u1"), query=query, limit=4)
        same_items(a, b)
        assert a[0].score > a[-1].score
    assert ours.search(("memories", "u1"), query="drink", limit=1)[0].value["text"] in memories[0::4]


def test_pages_of_a_semantic_search_tile_the_reference_ranking(tmp_path):
    """Paging through scored items and on into the unscored ones (index=False puts) in pages of 2."""
    embedder = HashingEmbedder(DIM)
    ours = LanceDBStore(tmp_path, namespace="t", index={"embed": embedder})
    ref = Reference({"dims": DIM, "embed": hashing_embed(embedder)}, Clock(), None)
    rng = random.Random(7)
    for i in range(9):
        ns, value, index = ("docs", f"u{i % 2}"), random_value(rng), False if i % 3 == 0 else None
        ours.put(ns, f"k{i}", value, index=index)
        ref.put(ns, f"k{i}", value, index, None)
        ref.clock.now += timedelta(seconds=1)  # the reference orders unscored items by write time; ours too
    for query, filter in (("tea python", None), ("graph memory", {"tag": {"$ne": "b"}})):
        full, scored = ref.search(("docs",), query, filter, 100, 0)
        assert 0 < len(scored) < len(full)  # both kinds of items are on the pages
        pages = [ours.search(("docs",), query=query, filter=filter, limit=2, offset=o) for o in range(0, 12, 2)]
        same_items([item for page in pages for item in page], full, scored)


def test_every_filter_operator_at_its_boundaries(tmp_path):
    """Each operator on values at, just below and just above its operand; nested and list values too."""
    clock = Clock()
    ours = LanceDBStore(tmp_path, namespace="t", index=False, clock=clock)
    ref = Reference(None, clock, None)
    values = [{"score": s, "tag": t, "nested": n, "flags": f}
              for s, t, n, f in [(2, "a", {"level": 1, "x": 0}, [1, 2]), (3, "b", {"level": 0}, [2, 1]),
                                 (4, "c", {"level": 1}, [1]), (4.0, "a", "level 1", [1, 2, 3]),
                                 (4.5, "b", None, []), (5.5, "c", {"level": 2}, [1, 2]), (7, "a", 1, None)]]
    for i, value in enumerate(values):
        ours.put(("f",), f"k{i}", value)
        ref.put(("f",), f"k{i}", value, None, None)
        clock.now += timedelta(seconds=1)
    filters = [*FILTERS, {"score": {"$gt": 4}}, {"score": {"$gte": 4}}, {"score": {"$lt": 4}},
               {"score": {"$lte": 4}}, {"score": {"$eq": 4}}, {"score": {"$ne": 4}}, {"score": 4.0},
               {"nested": {"level": 1, "x": 0}}, {"tag": "zzz"}, {"flags": []}, {"missing": None}]
    for filter in filters:
        a = ours.search(("f",), filter=filter, limit=50)
        b, _ = ref.search(("f",), None, filter, 50, 0)
        assert [(i.key, i.value) for i in a] == [(i.key, i.value) for i in b], filter
    assert [i.key for i in ours.search(("f",), filter={"score": {"$gt": 4}})] == ["k6", "k5", "k4"]
