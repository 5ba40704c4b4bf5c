"""Reading the memory: candidate pools by vector search (with IVF probe planning), rows by id, where clauses."""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from hullft_agent.candidates import CandidatePool
from hullft_agent.config import LearnFrom
from hullft_agent.errors import InvalidArgumentError, InvalidWhereError
from hullft_agent.memory.base import MemoryCore, remember_lru, select
from hullft_agent.memory.filters import check_where_syntax, combine, learn_from_sql, scope
from hullft_agent.memory.schema import SCALAR_COLUMNS, check_name, check_text, check_vector

#: Field metadata of the vector column: IVF partitions of the index this memory built.
META_INDEX_PARTITIONS = "hullft.index_partitions"
#: Fields of each candidate's metadata by default (more cost a little latency per column).
_POOL_FIELDS: tuple[str, ...] = ()


def vector_index(table: Any) -> Any:
    """The table's index on the vector column, or None."""
    for index in table.list_indices():
        if list(index.columns) == ["vector"]:
            return index
    return None


def index_type_name(index: Any) -> str:
    """'IvfHnswSq' -> 'IVF_HNSW_SQ' (the names MemoryConfig.index_type uses)."""
    raw = str(index.index_type)
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", raw).upper()


def records(result: pa.Table) -> list[dict[str, Any]]:
    """Scalar columns of a selection as dicts, metadata decoded from JSON."""
    columns = [c for c in SCALAR_COLUMNS if c in result.column_names]
    data = {c: result[c].to_pylist() for c in columns}
    out = []
    for i in range(result.num_rows):
        rec = {c: data[c][i] for c in columns}
        if "metadata" in rec:
            rec["metadata"] = json.loads(rec["metadata"]) if rec["metadata"] else {}
        out.append(rec)
    return out


class QueryMixin(MemoryCore):
    """`candidates` and `get`, and the where-clause check the counting methods share."""

    _valid_where: OrderedDict[str, None]
    _probe_cache: tuple[int, int, int] | None
    _index_kind: str | None

    def _check_where(self, table: Any, where: str | None, base: str | None) -> str | None:
        if where is None:
            return base
        clause = check_where_syntax(where)
        full = combine(base, clause)
        if clause not in self._valid_where:
            try:
                table.search().where(full).select(["id"]).limit(1).explain_plan()
            except Exception as exc:  # lancedb raises RuntimeError/ValueError with the parser's message
                raise InvalidWhereError(
                    f"where clause {clause!r:.200} does not parse against the memory: {exc}"
                ) from exc
            remember_lru(self._valid_where, clause, None)
        return full

    def _query_vector(self, vector: Any, context: str | None) -> np.ndarray:
        if isinstance(vector, str):
            if context is not None:
                raise InvalidArgumentError("pass either a query vector or a context text, not both")
            context, vector = vector, None
        if vector is not None and context is not None:
            raise InvalidArgumentError("pass either vector= or context=, not both")
        if vector is None:
            if context is None:
                raise InvalidArgumentError("candidates() needs a query: vector= (np.ndarray) or context= (str)")
            return self._embed([check_text(context, "context")])[0]
        return check_vector(np.asarray(vector, dtype=np.float32).reshape(-1), self._dim, what="query vector")

    def candidates(
        self,
        vector: np.ndarray | str | None = None,
        k: int = 200,
        *,
        context: str | None = None,
        namespace: str | None = None,
        task: str | None = None,
        exclude_episode: str | None = None,
        where: str | None = None,
        fields: Sequence[str] | str | None = None,
        exact: bool = False,
        learn_from: LearnFrom | None = None,
    ) -> CandidatePool:
        """The k rows nearest the query, within one namespace, as the adapter's candidate pool.

        The query is `vector` (unit-normalised here) or `context`, embedded with the memory's
        embedder (a str passed as `vector` is taken as the context). `task` restricts to a task,
        `exclude_episode` drops an episode (the current one, so it cannot leak into its own
        training set), `where` adds a SQL filter that can only narrow the result. Similarities are
        cosines; each row's metadata holds its `id`, `namespace`, `distance` (1 - cosine) and the
        columns named in `fields` (a list, or "all"; each one costs about a millisecond of latency
        at 100k rows, so none by default). `exact` skips the vector index (ground truth). An empty table
        or an unknown namespace gives an empty pool. `learn_from` keeps only the rows it names (kinds,
        outcomes, a minimum reward, actors, its own `where`) and adds their kind, reward, outcome and
        metadata to each row's entry, so decision rows reach the adapter with their prompt and answer.
        """
        table = self._live()
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidArgumentError(f"k must be an integer >= 1, got {k!r}")
        query = self._query_vector(vector, context)
        ns = self._ns(namespace)
        if task is not None:
            task = check_name(task, "task")
        if exclude_episode is not None:
            exclude_episode = check_name(exclude_episode, "exclude_episode")
        base = scope(ns, task=task, exclude_episode=exclude_episode)
        if learn_from is not None:
            base = combine(base, learn_from_sql(learn_from))
            where = (
                where
                if learn_from.where is None
                else (
                    learn_from.where
                    if where is None
                    else f"({where}) AND ({check_where_syntax(learn_from.where)})"
                )
            )
            if fields != "all":
                given = [] if fields is None else [fields] if isinstance(fields, str) else list(fields)
                fields = [*given, *(c for c in ("kind", "reward", "outcome", "metadata") if c not in given)]
        columns = self._candidate_columns(fields)
        filt = self._check_where(table, where, base)

        def run(probes: int | None, widen: bool) -> pa.Table:
            search = (
                table.search(query, vector_column_name="vector")
                .distance_type("cosine")
                .where(filt, prefilter=True)
                .select(columns)
                .limit(int(k))
            )
            if exact:
                return search.bypass_vector_index().to_arrow()
            if probes is not None:
                # widen: keep probing partitions until k rows pass the filter (a small namespace)
                search = search.minimum_nprobes(probes).maximum_nprobes(0 if widen else probes)
            if self._index_kind is not None and "HNSW" in self._index_kind:
                search = search.ef(self.config.ef or max(300, 2 * int(k)))
            if self.config.refine_factor:
                search = search.refine_factor(self.config.refine_factor)
            return search.to_arrow()

        probes = None if exact else self._probes(table, int(k))
        result = run(probes, widen=False)
        if probes is not None and result.num_rows < k:
            result = run(probes, widen=True)
        if result.num_rows == 0:
            return CandidatePool.empty(self._dim)
        return self._pool(result, ns)

    def _candidate_columns(self, fields: Sequence[str] | str | None) -> list[str]:
        if fields is None:
            extra = list(_POOL_FIELDS)
        elif fields == "all":
            extra = [c for c in SCALAR_COLUMNS if c not in ("id", "text")]
        else:
            extra = [fields] if isinstance(fields, str) else list(fields)
            unknown = sorted(set(extra) - set(SCALAR_COLUMNS))
            if unknown:
                raise InvalidArgumentError(
                    f"unknown fields {unknown}; expected some of {list(SCALAR_COLUMNS)} or 'all'"
                )
        return ["id", "text", "vector", *[c for c in extra if c not in ("id", "text", "vector")], "_distance"]

    def _probes(self, table: Any, k: int) -> int | None:
        """IVF partitions to probe (None: no IVF index): enough to scan about
        `probe_rows_per_k * k` rows, at least `min_nprobes`, unless `nprobes` is set."""
        version = table.version
        if self._probe_cache is None or self._probe_cache[0] != version:
            index = vector_index(table)
            self._index_kind = None if index is None else index_type_name(index)
            partitions = 0
            if index is not None and "IVF" in self._index_kind:
                meta = table.schema.field("vector").metadata or {}
                partitions = int(meta.get(META_INDEX_PARTITIONS.encode(), b"0") or 0) or -1
            self._probe_cache = (version, partitions, int(table.count_rows()))
        _, partitions, rows = self._probe_cache
        if partitions == 0:
            return None
        if self.config.nprobes is not None:
            return self.config.nprobes
        if partitions < 0:  # an index this memory did not build: lance's default
            return self.config.min_nprobes
        wanted = math.ceil(self.config.probe_rows_per_k * k * partitions / max(rows, 1))
        return min(partitions, max(self.config.min_nprobes, wanted))

    def _pool(self, result: pa.Table, namespace: str) -> CandidatePool:
        n = result.num_rows
        flat = result["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors = np.ascontiguousarray(flat.reshape(n, self._dim), dtype=np.float32)
        distances = result["_distance"].to_numpy(zero_copy_only=False).astype(np.float32)
        ids = result["id"].to_pylist()
        columns = [c for c in result.column_names if c not in ("id", "text", "vector", "_distance")]
        data = [result[c].to_pylist() for c in columns]
        if "metadata" in columns:
            j = columns.index("metadata")
            data[j] = [json.loads(m) if m else {} for m in data[j]]
        dist = distances.tolist()
        metadata = [
            {
                "id": ids[i],
                "namespace": namespace,
                **{c: data[j][i] for j, c in enumerate(columns)},
                "distance": dist[i],
            }
            for i in range(n)
        ]
        return CandidatePool(
            ids=ids,
            texts=result["text"].to_pylist(),
            vectors=vectors,
            similarities=(1.0 - distances).astype(np.float32),
            metadata=metadata,
        )

    def get(
        self, ids: str | Sequence[str], *, namespace: str | None = None, with_vectors: bool = False
    ) -> Any:
        """Rows by id (in the order asked; ids not found are left out). One id gives a dict or None."""
        table = self._live()
        single = isinstance(ids, str)
        wanted = [check_name(i, "id") for i in ([ids] if single else list(ids))]
        if not wanted:
            return []
        columns = list(SCALAR_COLUMNS) + (["vector"] if with_vectors else [])
        found = select(
            table, scope(self._ns(namespace, allow_all=True), ids=wanted), columns, limit=len(wanted)
        )
        by_id = {r["id"]: r for r in records(found)}
        if with_vectors:
            for r, v in zip(found["id"].to_pylist(), found["vector"].to_pylist(), strict=True):
                by_id[r]["vector"] = np.asarray(v, dtype=np.float32)
        if single:
            return by_id.get(wanted[0])
        return [by_id[i] for i in wanted if i in by_id]
