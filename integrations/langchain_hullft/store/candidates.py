"""Store items as candidate rows: an agent's saved memories shape its test-time finetuning.

The items stay in the store's table (one place); `StoreCandidates` reads them as a `CandidateSource`,
optionally merged with a `TrajectoryMemory`'s rows in one pool ranked by similarity, so the adapter's
report names whichever rows it selected, trajectory steps and store items alike.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from langgraph.store.base import Item, SearchOp

from hullft_agent.candidates import CandidatePool, CandidateSource, _learns_from, check_query
from hullft_agent.config import LearnFrom
from hullft_agent.errors import EmbedderMismatchError, InvalidArgumentError, InvalidTypeError
from langchain_hullft.store._items import SEPARATOR, check_op
from langchain_hullft.store.lancedb_store import LanceDBStore

#: The kind of a store item in a candidate pool (and in `LearnFrom.kinds`).
STORE_KIND = "store"
#: Candidate ids of store items: "store:<item id>@<updated_at in µs>", so an overwritten item is a new
#: candidate (a per_task ledger never counts training on its old value as training on the new one).
ID_PREFIX = "store:"


def candidate_id(row: dict[str, Any]) -> str:
    return f"{ID_PREFIX}{row['id']}@{int(row['updated_at'].timestamp() * 1_000_000)}"


def parse_candidate_id(cid: str) -> str | None:
    """The item id of a store candidate id (None for other ids, e.g. a trajectory row's)."""
    if not isinstance(cid, str) or not cid.startswith(ID_PREFIX) or "@" not in cid:
        return None
    return cid[len(ID_PREFIX):].split("@", 1)[0]


class StoreCandidates:
    """A `CandidateSource` over a `LanceDBStore`'s items under a namespace prefix (plus, optionally, a memory).

    Each live item (not expired) with vectors is one candidate of kind "store": its vector and text
    are those of its text nearest the query (the one that scored it), its metadata the item's
    namespace path, key and value. `task` narrows to the items under `prefix + (task,)` (LangGraph
    namespaces one level below the prefix play the role of the memory's tasks). Store items belong
    to no episode, so `exclude_episode` applies to the memory's rows only. `learn_from` keeps store
    items only if it admits kind "store" and sets no reward, outcome or actor condition (items have
    none); its SQL `where` cannot apply to items and is refused while items are in the pool.
    """

    def __init__(self, store: Any, namespace_prefix: tuple[str, ...] = (), *, memory: Any = None) -> None:
        if not isinstance(store, LanceDBStore):
            raise InvalidTypeError(f"store must be a LanceDBStore, got {type(store).__name__}")
        if store.index is None:
            raise InvalidArgumentError("a store without an index (index=False) has no vectors to offer as candidates")
        check_op(SearchOp(namespace_prefix))
        if memory is not None:
            if not isinstance(memory, CandidateSource):
                raise InvalidTypeError(f"memory must be a CandidateSource (a TrajectoryMemory), got {type(memory).__name__}")
            name, dim = getattr(memory, "embedder_name", None), getattr(memory, "dim", None)
            if (name is not None and name != store.index.name) or (dim is not None and dim != store.index.dims):
                raise EmbedderMismatchError(
                    f"the memory embeds with {name!r} (dim {dim}) and the store with {store.index.name!r} "
                    f"(dim {store.index.dims}); their vectors cannot share a pool. Open the store with "
                    "LanceDBStore.from_memory(memory)."
                )
        self.store = store
        self.prefix = tuple(namespace_prefix)
        self.memory = memory

    @property
    def dim(self) -> int:
        return self.store.index.dims

    def candidates(
        self,
        vector: np.ndarray,
        k: int,
        *,
        task: str | None = None,
        exclude_episode: str | None = None,
        learn_from: LearnFrom | None = None,
    ) -> CandidatePool:
        """The k candidates nearest `vector`: store items, and the memory's rows when merged, by similarity."""
        query = check_query(vector, k, self.dim)
        entries: list[tuple[float, str, str, np.ndarray, dict[str, Any]]] = []
        if learn_from is None or _learns_from({"kind": STORE_KIND, "metadata": {}}, learn_from):
            if learn_from is not None and learn_from.where is not None:
                raise InvalidArgumentError(
                    "learn_from.where is SQL over trajectory rows; store items cannot be filtered by it "
                    "(leave 'store' out of learn_from.kinds, or drop the where)"
                )
            entries.extend(self._store_entries(query, int(k), task))
        if self.memory is not None:
            narrow = {} if learn_from is None else {"learn_from": learn_from}
            pool = self.memory.candidates(query, int(k), task=task, exclude_episode=exclude_episode, **narrow)
            for i in range(len(pool)):
                meta = pool.metadata[i] if pool.metadata else {"id": pool.ids[i]}
                entries.append((float(pool.similarities[i]), pool.ids[i], pool.texts[i], pool.vectors[i], meta))
        if not entries:
            return CandidatePool.empty(self.dim)
        entries.sort(key=lambda e: -e[0])
        top = entries[: int(k)]
        return CandidatePool(
            ids=[e[1] for e in top],
            texts=[e[2] for e in top],
            vectors=np.stack([np.asarray(e[3], dtype=np.float32) for e in top]),
            similarities=np.array([e[0] for e in top], dtype=np.float32),
            metadata=[e[4] for e in top],
        )

    def _store_entries(self, query: np.ndarray, k: int, task: str | None) -> list[tuple]:
        prefix = self.prefix
        if task is not None:
            if not isinstance(task, str) or not task or SEPARATOR in task:
                return []  # no LangGraph label can be named so: no store item is under it
            prefix = (*prefix, task)
        out = []
        for row in self.store.nearest_items(query, k, prefix):
            vectors = np.asarray(row["vector"], dtype=np.float32)
            best = int(np.argmax(vectors @ query))
            cid = candidate_id(row)
            meta = {
                "id": cid, "kind": STORE_KIND, "namespace": self.store.tenant, "item_id": row["id"],
                "store_namespace": list(row["namespace_path"]), "key": row["key"], "value": json.loads(row["value"]),
                "updated_at": row["updated_at"].isoformat(), "distance": 1.0 - row["score"],
            }
            out.append((float(row["score"]), cid, row["texts"][best], vectors[best], meta))
        return out

    def items(self, ids: list[str]) -> list[Item | None]:
        """The store items behind candidate ids (an adaptation report's `selected_ids`), in order; None
        for ids that are not store items or whose item is gone (the item's current value otherwise)."""
        item_ids = [parse_candidate_id(i) for i in ids]
        found = self.store.items_by_id([i for i in item_ids if i is not None])
        return [None if i is None else found.get(i) for i in item_ids]

