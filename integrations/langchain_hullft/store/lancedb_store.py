"""`LanceDBStore`: a LangGraph long-term store (`BaseStore`) in a Lance table beside the trajectory memory.

Items live in their own table of the memory's database (one row per item: namespace path, key, JSON
value, embedded texts and their vectors, created/updated/expiry times), under one tenant: the memory
namespace the store was opened for. Every read and write carries `tenant = <that namespace>` as an
escaped literal and every item id hashes the tenant in, so no LangGraph namespace, whatever its labels,
reaches another tenant's rows.

Writes: one Lance commit per batch (an upsert keyed by the item id; deletes in the same commit). The id
column is marked as Lance's primary key, so two processes inserting the same new key conflict and retry
instead of both landing: one row per item, the last commit wins. On a local folder writers also hold the
memory's `flock` write lock, which keeps `created_at` exact under concurrent first writes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.expr import col, lit
from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
)

from hullft_agent.errors import (
    EmbedderMismatchError,
    InvalidArgumentError,
    InvalidTypeError,
    NotAMemoryTableError,
)
from hullft_agent.memory.base import commit_with_retries
from hullft_agent.memory.config import MemoryConfig, default_memory_uri
from hullft_agent.memory.connection import connect, local_root
from hullft_agent.memory.lance_errors import is_table_existing, is_table_missing, permission_error
from hullft_agent.memory.locking import write_lock
from langchain_hullft.store._index import StoreIndex, resolve_index, unit_rows
from langchain_hullft.store._items import (
    META_DIM,
    META_EMBEDDER,
    check_op,
    check_ttl,
    decode_namespace,
    encode_namespace,
    encode_value,
    item_id,
    item_schema,
    matches,
    namespace_matches,
    schema_stamp,
)

logger = logging.getLogger(__name__)

DEFAULT_TABLE = "langgraph_store"
#: Scalar indexes (on the item id and namespace) are built by `optimize()` once the table holds this many rows.
SCALAR_INDEX_ROWS = 1000
#: Above this many ids a lookup scans the tenant's ids instead of sending one long `IN (...)` list.
_IN_LIST_MAX = 512
_ITEM_COLUMNS = ["id", "namespace", "key", "value", "created_at", "updated_at", "expires_at", "ttl_minutes"]
_TTL_KEYS = {"refresh_on_read", "omit_expired", "default_ttl", "sweep_interval_minutes"}


def _utc(value: datetime) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidTypeError(f"the store's clock must return a datetime, got {type(value).__name__}")
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _and(*parts: str | None) -> str:
    return " AND ".join(f"({p})" for p in parts if p)


def _in(column: str, values: Iterable[str]) -> str:
    return col(column).isin(list(values)).to_sql()


@dataclass
class _Plan:
    """A validated batch: its ops, the puts to apply (last one per item wins), the texts to embed."""

    ops: list[Op]
    puts: dict[tuple[tuple[str, ...], str], PutOp] = field(default_factory=dict)
    texts: dict[tuple[tuple[str, ...], str], list[str]] = field(default_factory=dict)
    queries: list[str] = field(default_factory=list)

    def documents(self) -> list[str]:
        return list(dict.fromkeys(t for texts in self.texts.values() for t in texts))


def _check_ttl_config(ttl: Any) -> TTLConfig | None:
    if ttl is None:
        return None
    if not isinstance(ttl, dict):
        raise InvalidTypeError(f"ttl must be a TTLConfig dict or None, got {type(ttl).__name__}")
    unknown = sorted(set(ttl) - _TTL_KEYS)
    if unknown:
        raise InvalidArgumentError(f"unknown ttl settings {unknown}; expected some of {sorted(_TTL_KEYS)}")
    check_ttl(ttl.get("default_ttl"))
    check_ttl(ttl.get("sweep_interval_minutes"))
    return TTLConfig(**ttl)  # type: ignore[typeddict-item]


class LanceDBStore(BaseStore):
    """A LangGraph `BaseStore` on LanceDB: put/get/search/delete/list_namespaces, filters, semantic
    search and TTLs, on a local folder, an object store (`s3://`, `gs://`, `az://`) or LanceDB Cloud.

    >>> store = LanceDBStore("./hullft_memory", namespace="agent-1")        # packaged MiniLM index
    >>> store.put(("memories", "user-1"), "tea", {"text": "prefers green tea"})
    >>> store.search(("memories", "user-1"), query="what does the user drink?")
    >>> graph = builder.compile(store=store)

    - `namespace`: the tenant, a memory namespace; the store never reads or writes another's items.
    - `index`: a LangGraph `IndexConfig` (`dims`, `embed`, `fields`; `embed` may be a hullft embedder);
      None (default): the packaged all-MiniLM-L6-v2 over the whole value (`fields=["$"]`); False: none
      (search by filter only). The embedder's name and dimension are stamped on the table.
    - `ttl`: a LangGraph `TTLConfig` (`default_ttl` and per-put `ttl` in minutes, `refresh_on_read`,
      `omit_expired`, `sweep_interval_minutes` for `start_ttl_sweeper`).
    - `clock`: returns the current time (UTC); inject one to test or simulate expiry.
    - `as_candidate_source()`: the items as candidate rows (kind "store") for a `TestTimeAdapter`.
    """

    supports_ttl = True

    def __init__(
        self,
        uri: str | Path | None = None,
        *,
        namespace: str = "default",
        table: str = DEFAULT_TABLE,
        index: Any = None,
        ttl: TTLConfig | None = None,
        storage_options: dict[str, str] | None = None,
        read_consistency_interval: float | None = 0.0,
        optimize_every: int = 200,
        cleanup_older_than_s: float = 3600.0,
        commit_retries: int = 8,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._config = MemoryConfig(
            uri=str(uri) if uri is not None else default_memory_uri(),
            namespace=namespace,
            table=table,
            storage_options=storage_options or {},
            read_consistency_interval=read_consistency_interval,
            optimize_every=optimize_every,
            cleanup_older_than_s=cleanup_older_than_s,
            commit_retries=commit_retries,
        )
        self.ttl_config = _check_ttl_config(ttl)
        self._index: StoreIndex | None = resolve_index(index)
        self.index_config = None if self._index is None else {"dims": self._index.dims,
                                                               "fields": list(self._index.fields)}
        self.embeddings = None if self._index is None else self._index.embeddings
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._root = local_root(self._config.uri)
        self._db = connect(self._config)
        self._table = self._open()
        self._commits = 0
        self._sweeper: threading.Thread | None = None
        self._stop_sweeper = threading.Event()

    @classmethod
    def from_memory(cls, memory: Any, *, table: str = DEFAULT_TABLE, index: Any = None, **kwargs: Any) -> LanceDBStore:
        """A store in the same database and tenant as a `TrajectoryMemory`, embedding with the
        memory's embedder unless `index` says otherwise, so its items and the memory's rows share one
        embedding space (what `as_candidate_source(memory=...)` needs)."""
        if index is None:
            if memory.embedder is None:
                raise InvalidArgumentError("the memory has no embedder: pass index= (an IndexConfig) or index=False")
            index = {"embed": memory.embedder}
        config = memory.config
        kwargs.setdefault("storage_options", dict(config.storage_options))
        return cls(config.uri, namespace=config.namespace, table=table, index=index, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def tenant(self) -> str:
        """The memory namespace this store is bound to."""
        return self._config.namespace

    @property
    def namespace(self) -> str:
        return self._config.namespace

    @property
    def uri(self) -> str:
        return self._config.uri

    @property
    def table_name(self) -> str:
        return self._config.table

    @property
    def table(self) -> Any:
        """The underlying lancedb table (for inspection; write through the store)."""
        return self._live()

    @property
    def index(self) -> StoreIndex | None:
        return self._index

    def __repr__(self) -> str:
        embedder = None if self._index is None else self._index.name
        return f"LanceDBStore(uri={self.uri!r}, table={self.table_name!r}, tenant={self.tenant!r}, embedder={embedder!r})"

    def _live(self) -> Any:
        if self._table is None:
            raise RuntimeError("this LanceDBStore is closed")
        return self._table

    def _now(self) -> datetime:
        return _utc(self._clock())

    # ------------------------------------------------------------------ opening
    def _open(self) -> Any:
        name, uri = self._config.table, self._config.uri
        try:
            table = self._db.open_table(name)
        except Exception as exc:
            refused = permission_error(exc, "open", uri)
            if refused is not None:
                raise refused from exc
            if not is_table_missing(exc):
                raise
            table = None
        if table is None:
            dim, embedder = (0, "") if self._index is None else (self._index.dims, self._index.name)
            try:
                table = self._db.create_table(name, schema=item_schema(dim, embedder))
                logger.info("created LangGraph store table %s/%s (dim %d)", uri, name, dim)
            except Exception as exc:
                refused = permission_error(exc, "create a table in", uri)
                if refused is not None:
                    raise refused from exc
                if not is_table_existing(exc):
                    raise
                table = self._db.open_table(name)  # created meanwhile by another process
        stamp = schema_stamp(table.schema)
        if stamp is None:
            raise NotAMemoryTableError(f"table {name!r} at {uri} is not a hullft LangGraph store table; "
                                       "use another table name")
        dim = int(stamp[META_DIM])
        if self._index is not None and (dim != self._index.dims or stamp[META_EMBEDDER] != self._index.name):
            had = "no index" if dim == 0 else f"embedder {stamp[META_EMBEDDER]!r} (dim {dim})"
            raise EmbedderMismatchError(
                f"store table {uri}/{name} was written with {had}; it cannot be opened with "
                f"{self._index.name!r} (dim {self._index.dims}). Use the same embedder (or index=False), or another table."
            )
        return table

    def _commit(self, what: str, fn: Callable[[], Any]) -> Any:
        table = self._live()
        return commit_with_retries(what, fn, retries=self._config.commit_retries, location=self.uri,
                                   before_retry=table.checkout_latest)

    # ------------------------------------------------------------------ the BaseStore interface
    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run a batch: validate every op, apply its puts and deletes (one commit), then answer its reads."""
        plan = self._plan(ops)
        return self._run(plan, *self._embed(plan))

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """`batch` for async graphs: embeddings through the async API, Lance I/O in a worker thread."""
        plan = self._plan(ops)
        docs, queries = await self._aembed(plan)
        return await asyncio.get_running_loop().run_in_executor(None, self._run, plan, docs, queries)

    def _plan(self, ops: Iterable[Op]) -> _Plan:
        plan = _Plan(list(ops))
        for op in plan.ops:
            check_op(op)
        for op in plan.ops:
            if isinstance(op, PutOp):
                key = (op.namespace, op.key)
                plan.puts[key] = op
                plan.texts.pop(key, None)
                if op.value is not None and self._index is not None and op.index is not False:
                    plan.texts[key] = self._index.texts(dict(op.value), op.index)
            elif isinstance(op, SearchOp) and op.query and self._index is not None:
                plan.queries.append(op.query)
        plan.queries = list(dict.fromkeys(plan.queries))
        return plan

    def _embed(self, plan: _Plan) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        if self._index is None:
            return {}, {}
        docs = plan.documents()
        emb = self._index.embeddings
        doc_vecs = unit_rows(emb.embed_documents(docs), len(docs), self._index.dims, "the items' texts") if docs else []
        queries = {q: unit_rows([emb.embed_query(q)], 1, self._index.dims, f"query {q!r:.60}")[0]
                   for q in plan.queries}
        return dict(zip(docs, doc_vecs, strict=True)), queries

    async def _aembed(self, plan: _Plan) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        if self._index is None:
            return {}, {}
        docs = plan.documents()
        emb = self._index.embeddings
        doc_vecs = []
        if docs:
            doc_vecs = unit_rows(await emb.aembed_documents(docs), len(docs), self._index.dims, "the items' texts")
        queries = {}
        for q in plan.queries:
            queries[q] = unit_rows([await emb.aembed_query(q)], 1, self._index.dims, f"query {q!r:.60}")[0]
        return dict(zip(docs, doc_vecs, strict=True)), queries

    def _run(self, plan: _Plan, docs: dict[str, np.ndarray], queries: dict[str, np.ndarray]) -> list[Result]:
        if plan.puts:
            self._write(plan, docs)
        now = self._now()
        results: list[Result] = [None] * len(plan.ops)
        refresh: dict[str, float] = {}
        gets = [(i, op) for i, op in enumerate(plan.ops) if isinstance(op, GetOp)]
        if gets:
            found = self._rows_by_id([item_id(self.tenant, op.namespace, op.key) for _, op in gets], now)
            for i, op in gets:
                row = found.get(item_id(self.tenant, op.namespace, op.key))
                results[i] = None if row is None else _item(row)
                if row is not None and op.refresh_ttl and row["ttl_minutes"] is not None:
                    refresh[row["id"]] = row["ttl_minutes"]
        for i, op in enumerate(plan.ops):
            if isinstance(op, SearchOp):
                rows = self._search(op, queries.get(op.query) if op.query else None, now)
                results[i] = [_item(row, search=True) for row in rows]
                if op.refresh_ttl:
                    refresh.update({r["id"]: r["ttl_minutes"] for r in rows if r["ttl_minutes"] is not None})
            elif isinstance(op, ListNamespacesOp):
                results[i] = self._list_namespaces(op, now)
        if refresh:
            self._refresh(refresh, now)
        return results

    # ------------------------------------------------------------------ writes
    def _write(self, plan: _Plan, docs: dict[str, np.ndarray]) -> None:
        now = self._now()
        rows, deletes = [], []
        for (namespace, key), op in plan.puts.items():
            iid = item_id(self.tenant, namespace, key)
            if op.value is None:
                deletes.append(iid)
                continue
            ttl = check_ttl(op.ttl)
            texts = plan.texts.get((namespace, key), [])
            rows.append({
                "id": iid, "tenant": self.tenant, "namespace": encode_namespace(namespace), "key": key,
                "value": encode_value(op.value, namespace, key), "texts": texts or None, "updated_at": now,
                "expires_at": None if ttl is None else now + timedelta(minutes=ttl), "ttl_minutes": ttl,
                "vectors": [docs[t] for t in texts] if self._index is not None else None,
            })
        table = self._live()
        with write_lock(self._root, self.table_name):
            created = self._created_at([r["id"] for r in rows], now) if rows else {}
            for row in rows:
                row["created_at"] = created.get(row["id"], now)
            gone = _and(col("tenant").eq(lit(self.tenant)).to_sql(), _in("id", deletes)) if deletes else None
            if rows:
                data = self._arrow(rows)
                merge = table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
                if gone is not None:
                    merge = merge.when_not_matched_by_source_delete(gone)
                self._commit("write to", lambda: merge.execute(data))
            else:
                self._commit("delete from", lambda: table.delete(gone))
        self._after_write()

    def _arrow(self, rows: list[dict[str, Any]]) -> pa.Table:
        schema = self._live().schema
        columns = {name: pa.array([r[name] for r in rows], type=schema.field(name).type)
                   for name in schema.names if name != "vector"}
        if "vector" in schema.names:
            dim = self._index.dims if self._index is not None else int(schema_stamp(schema)[META_DIM])
            lists = [r["vectors"] or [] for r in rows]
            flat = np.concatenate([np.asarray(v, dtype=np.float32).reshape(-1, dim) for v in lists if v]
                                  or [np.zeros((0, dim), np.float32)])
            offsets = pa.array(np.cumsum([0, *map(len, lists)]), type=pa.int32())
            inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), type=pa.float32()), dim)
            mask = pa.array([not v for v in lists])
            columns["vector"] = pa.ListArray.from_arrays(offsets, inner, mask=mask).cast(schema.field("vector").type)
        return pa.Table.from_arrays([columns[n] for n in schema.names], schema=schema.remove_metadata())

    def _created_at(self, ids: list[str], now: datetime) -> dict[str, datetime]:
        """Creation times of the items that exist as reads see them (an overwrite keeps its item's
        `created_at`; with `omit_expired` an expired item is gone, and a put makes a new one)."""
        table = self._live()
        scope = self._scope(now)
        if len(ids) <= _IN_LIST_MAX:
            found = table.search().where(_and(scope, _in("id", ids))).select(["id", "created_at"]).limit(None)
            found = found.to_arrow()
        else:
            found = table.search().where(scope).select(["id", "created_at"]).limit(None).to_arrow()
            found = found.filter(pc.is_in(found["id"], value_set=pa.array(ids)))
        return dict(zip(found["id"].to_pylist(), found["created_at"].to_pylist(), strict=True))

    def _after_write(self) -> None:
        self._commits += 1
        every = self._config.optimize_every
        if every and self._commits % every == 0:
            try:
                self.optimize()
            except Exception as exc:  # another process may be compacting; the next round retries
                logger.warning("optimizing the store table failed: %s", exc)

    def _refresh(self, ttls: dict[str, float], now: datetime) -> None:
        """Restart the TTL clock of items a read returned (one commit per distinct TTL)."""
        table = self._live()
        by_ttl: dict[float, list[str]] = {}
        for iid, ttl in ttls.items():
            by_ttl.setdefault(ttl, []).append(iid)
        with write_lock(self._root, self.table_name):
            for ttl, ids in by_ttl.items():
                where = _and(col("tenant").eq(lit(self.tenant)).to_sql(), _in("id", ids), "ttl_minutes IS NOT NULL")
                expires = now + timedelta(minutes=ttl)
                self._commit("update", lambda w=where, e=expires: table.update(where=w, values={"expires_at": e}))
        self._after_write()

    # ------------------------------------------------------------------ reads
    def _scope(self, now: datetime, prefix: tuple[str, ...] = (), *, live: bool | None = None) -> str:
        """The SQL every read starts from: this tenant, a namespace prefix, and (with `omit_expired`,
        or `live=True`) only items that have not expired."""
        parts = [col("tenant").eq(lit(self.tenant)).to_sql()]
        if prefix:
            path = encode_namespace(prefix)
            parts.append(f"{col('namespace').eq(lit(path)).to_sql()} OR "
                         f"starts_with(namespace, {lit(path + '.').to_sql()})")
        if live if live is not None else bool((self.ttl_config or {}).get("omit_expired")):
            parts.append(f"expires_at IS NULL OR {(col('expires_at') > lit(now)).to_sql()}")
        return _and(*parts)

    def _rows_by_id(self, ids: list[str], now: datetime, columns: list[str] | None = None) -> dict[str, dict]:
        if not ids:
            return {}
        table = self._live()
        result = (table.search().where(_and(self._scope(now), _in("id", ids))).select(columns or _ITEM_COLUMNS)
                  .limit(None).to_arrow())
        return {r["id"]: r for r in result.to_pylist()}

    def _search(self, op: SearchOp, query: np.ndarray | None, now: datetime) -> list[dict[str, Any]]:
        where = self._scope(now, op.namespace_prefix)
        if query is None:
            return self._listing(where, op.filter, op.offset, op.offset + op.limit, now)
        want = op.offset + op.limit
        scored = self._nearest(query, where, want, op.filter) if want else []
        if len(scored) >= want:
            return scored[op.offset:want]
        # fewer scored items than the page needs: the items without vectors follow, newest first
        tail = self._listing(_and(where, "vector IS NULL"), op.filter, max(0, op.offset - len(scored)),
                             want - len(scored), now)
        return scored[op.offset:] + tail

    def _nearest(self, query: np.ndarray, where: str, want: int, filter: Any,
                 columns: list[str] | None = None) -> list[dict[str, Any]]:
        """The `want` best-scoring items passing `filter` (exact cosine, an item scored by its best text);
        Lance ranks, the filter runs here, widening the search until enough items pass or none are left."""
        table = self._live()
        limit = want if not filter else max(4 * want, 64)
        while True:
            found = (table.search(query, vector_column_name="vector").distance_type("cosine")
                     .where(where, prefilter=True).select([*(columns or _ITEM_COLUMNS), "_distance"])
                     .limit(limit).to_arrow())
            rows = []
            for row in found.to_pylist():
                row["score"] = 1.0 - float(row.pop("_distance"))
                if not filter or matches(json.loads(row["value"]), filter):
                    rows.append(row)
            if len(rows) >= want or found.num_rows < limit:
                break
            limit *= 4
        rows.sort(key=lambda r: (-r["score"], -r["updated_at"].timestamp(), r["namespace"], r["key"]))
        return rows[:want]

    def _listing(self, where: str, filter: Any, start: int, stop: int, now: datetime) -> list[dict[str, Any]]:
        """Items newest first (then by namespace path and key), rows start..stop of those passing `filter`."""
        if stop <= start:
            return []
        table = self._live()
        columns = ["id", "namespace", "key", "updated_at"] + (["value"] if filter else [])
        found = table.search().where(where).select(columns).limit(None).to_arrow()
        if filter:
            keep = [matches(json.loads(v), filter) for v in found["value"].to_pylist()]
            found = found.filter(pa.array(keep, type=pa.bool_()))
        order = pc.sort_indices(found, sort_keys=[("updated_at", "descending"), ("namespace", "ascending"),
                                                  ("key", "ascending")])
        ids = found["id"].take(order[start:stop]).to_pylist()
        rows = self._rows_by_id(ids, now)
        return [rows[i] for i in ids if i in rows]

    def _list_namespaces(self, op: ListNamespacesOp, now: datetime) -> list[tuple[str, ...]]:
        table = self._live()
        paths = table.search().where(self._scope(now)).select(["namespace"]).limit(None).to_arrow()["namespace"]
        namespaces = [decode_namespace(p) for p in pc.unique(paths).to_pylist()]
        for condition in op.match_conditions or ():
            namespaces = [ns for ns in namespaces if namespace_matches(ns, condition)]
        if op.max_depth is not None:
            namespaces = list({ns[: op.max_depth] for ns in namespaces})
        return sorted(namespaces)[op.offset: op.offset + op.limit]

    # ------------------------------------------------------------------ candidates for the adapter
    def nearest_items(self, query: np.ndarray, k: int, prefix: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """The k live items nearest a unit query vector (expired ones left out whatever `omit_expired`
        says), with their texts and vectors: what `StoreCandidates` turns into candidate rows."""
        if self._index is None:
            raise InvalidArgumentError("this store has no index (index=False): its items have no vectors")
        where = _and(self._scope(self._now(), prefix, live=True), "vector IS NOT NULL")
        rows = self._nearest(query, where, k, None, [*_ITEM_COLUMNS, "texts", "vector"])
        for row in rows:
            row["namespace_path"] = decode_namespace(row["namespace"])
        return rows

    def items_by_id(self, ids: list[str]) -> dict[str, Item]:
        """Current items by item id (the `id` column); missing or deleted ones are left out."""
        return {i: _item(r) for i, r in self._rows_by_id(list(ids), self._now()).items()}

    def as_candidate_source(self, namespace_prefix: tuple[str, ...] = (), *, memory: Any = None) -> Any:
        """This store's items under `namespace_prefix` as a `CandidateSource` (kind "store"), merged
        with `memory`'s candidates when given; see `StoreCandidates`."""
        from langchain_hullft.store.candidates import StoreCandidates

        return StoreCandidates(self, namespace_prefix, memory=memory)

    # ------------------------------------------------------------------ TTL and maintenance
    def sweep_ttl(self) -> int:
        """Delete this tenant's expired items now; return how many were deleted."""
        table = self._live()
        now = self._now()
        where = _and(col("tenant").eq(lit(self.tenant)).to_sql(), "expires_at IS NOT NULL",
                     (col("expires_at") <= lit(now)).to_sql())
        with write_lock(self._root, self.table_name):
            expired = int(table.count_rows(where))
            if expired:
                self._commit("delete from", lambda: table.delete(where))
        if expired:
            self._after_write()
            logger.info("swept %d expired store items of tenant %r", expired, self.tenant)
        return expired

    def start_ttl_sweeper(self, sweep_interval_minutes: float | None = None) -> concurrent.futures.Future:
        """Sweep expired items every `sweep_interval_minutes` (default: the TTL config's, else 5) in a
        daemon thread; cancel the returned future, call `stop_ttl_sweeper()` or `close()` to stop it."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self._sweeper is not None and self._sweeper.is_alive():
            future.add_done_callback(lambda f: self._stop_sweeper.set() if f.cancelled() else None)
            return future
        interval = check_ttl(sweep_interval_minutes or (self.ttl_config or {}).get("sweep_interval_minutes") or 5)
        self._stop_sweeper.clear()

        def loop() -> None:
            while not self._stop_sweeper.wait(interval * 60):
                try:
                    self.sweep_ttl()
                except Exception as exc:  # keep sweeping: a failed round (a conflict, storage down) is retried
                    logger.warning("TTL sweep failed: %s", exc)
            if not future.done():
                future.set_result(None)

        future.add_done_callback(lambda f: self._stop_sweeper.set() if f.cancelled() else None)
        self._sweeper = threading.Thread(target=loop, name="hullft-store-ttl-sweeper", daemon=True)
        self._sweeper.start()
        return future

    def stop_ttl_sweeper(self, timeout: float | None = None) -> bool:
        """Stop the sweeper thread; True when it has stopped (or none ran)."""
        if self._sweeper is None:
            return True
        self._stop_sweeper.set()
        self._sweeper.join(timeout)
        stopped = not self._sweeper.is_alive()
        if stopped:
            self._sweeper = None
        return stopped

    def count(self) -> int:
        """Items this tenant holds (expired ones included until swept)."""
        return int(self._live().count_rows(col("tenant").eq(lit(self.tenant)).to_sql()))

    def optimize(self) -> None:
        """Compact the small fragments that every write adds, drop versions older than
        `cleanup_older_than_s`, and build the id and namespace indexes once the table is large.
        Runs automatically every `optimize_every` writes of this process."""
        from lancedb import index as lidx

        table = self._live()
        cleanup = timedelta(seconds=self._config.cleanup_older_than_s)
        self._commit("optimize", lambda: table.optimize(cleanup_older_than=cleanup))
        if table.count_rows() >= SCALAR_INDEX_ROWS:
            have = {tuple(i.columns) for i in table.list_indices()}
            for column in ("id", "namespace"):
                if (column,) not in have:
                    self._commit("index", lambda c=column: table.create_index(c, config=lidx.BTree(), replace=True))

    def close(self) -> None:
        """Stop the sweeper and release the table (every write is durable already)."""
        self.stop_ttl_sweeper()
        self._table = None
        self._db = None

    def __enter__(self) -> LanceDBStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _item(row: dict[str, Any], *, search: bool = False) -> Item:
    namespace = decode_namespace(row["namespace"])
    value = json.loads(row["value"])
    created, updated = _utc(row["created_at"]), _utc(row["updated_at"])
    if search:
        return SearchItem(namespace, row["key"], value, created, updated, score=row.get("score"))
    return Item(value=value, key=row["key"], namespace=namespace, created_at=created, updated_at=updated)
