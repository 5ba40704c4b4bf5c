"""`TrajectoryMemory`: an agent's episodes in a LanceDB table, served as candidate pools.

Local folders are embedded (no server); `s3://`, `gs://`, `az://` and `db://` URIs put the same
table on an object store or on LanceDB Cloud/Enterprise so many agent workers can share one memory.
Writes are append commits (optimistic, retried on conflict); a reader sees other processes' commits
within `read_consistency_interval`; `checkout(version)` pins a snapshot for evaluation.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from hullft_agent.candidates import CandidatePool
from hullft_agent.errors import (
    EmbedderMismatchError,
    EmbedderRequiredError,
    InvalidStepError,
    InvalidWhereError,
    MemoryPinnedError,
)
from hullft_agent.memory.config import MemoryConfig
from hullft_agent.memory.filters import check_where_syntax, combine, scope
from hullft_agent.memory.schema import (
    ALL_NAMESPACES,
    META_DIM,
    META_EMBEDDER,
    META_GRANULARITY,
    META_INDEX_ROWS,
    META_WINDOW,
    SCALAR_COLUMNS,
    WINDOW_KIND,
    WINDOW_META,
    CheckedStep,
    Step,
    arrow_schema,
    check_name,
    check_namespace,
    check_outcome,
    check_reward,
    check_step,
    check_text,
    check_vector,
    render_window,
    rows_to_arrow,
    table_settings,
)

logger = logging.getLogger(__name__)

META_INDEX_PARTITIONS = "hullft.index_partitions"
DEFAULT_WINDOW = 4
_MIN_INDEX_ROWS = 256
_CACHE_EPISODES = 10_000
#: Fields of each candidate's metadata by default (more cost a little latency per column).
_POOL_FIELDS: tuple[str, ...] = ()


@runtime_checkable
class TextEmbedder(Protocol):
    """What the memory needs of an embedder (`hullft_agent.embedding.Embedder` satisfies it)."""

    model_name: str
    dim: int

    def encode(self, texts: str | list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class EpisodeSummary:
    """One logged episode: how many rows it holds, its step range, reward and outcome, and when."""

    namespace: str
    episode_id: str
    task: str | None
    rows: int
    first_step: int
    last_step: int
    reward: float | None
    outcome: str | None
    started_at: datetime
    ended_at: datetime

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["ended_at"] = self.ended_at.isoformat()
        return data


def _is_conflict(exc: BaseException) -> bool:
    message = str(exc).lower()
    return any(
        word in message for word in ("conflict", "retryable", "too many concurrent", "concurrent commit")
    )


def _index_type_name(index: Any) -> str:
    """'IvfHnswSq' -> 'IVF_HNSW_SQ' (the names MemoryConfig.index_type uses)."""
    raw = str(index.index_type)
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", raw).upper()


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _describe(item: Any) -> str:
    if isinstance(item, Step):
        episode, step = item.episode_id, item.step
    elif isinstance(item, Mapping):
        episode, step = item.get("episode_id"), item.get("step")
    else:
        return ""
    bits = []
    if episode is not None:
        bits.append(f"episode {episode!r}")
    if step is not None:
        bits.append(f"step {step!r}")
    return f" ({', '.join(bits)})" if bits else ""


def _as_step(item: Any) -> Step | Mapping[str, Any]:
    if isinstance(item, (Step, Mapping)):
        return item
    if isinstance(item, tuple) and len(item) == 2:
        return Step(kind=item[0], text=item[1])
    raise TypeError(f"a step must be a Step, a mapping or a (kind, text) tuple, got {type(item).__name__}")


class TrajectoryMemory:
    """An agent's trajectory memory: log steps and episodes, retrieve candidate pools, maintain.

    >>> memory = TrajectoryMemory.open("./hullft_memory", embedder=embedder, namespace="agent-1")
    >>> memory.log_episode("ep-1", [("observation", "You are in a kitchen."), ("action", "open fridge")],
    ...                    task="cook", reward=1.0)
    >>> pool = memory.candidates(context="You see a fridge.", k=200, exclude_episode="ep-2")

    It satisfies `hullft_agent.candidates.CandidateSource`, so a `TestTimeAdapter` takes it as its
    source directly. Reads and writes are scoped to one namespace (the default one unless
    `namespace=` is passed); a query never returns rows of another namespace.
    """

    def __init__(
        self,
        config: MemoryConfig | None = None,
        *,
        embedder: TextEmbedder | None = None,
        **overrides: Any,
    ) -> None:
        base = config or MemoryConfig()
        self.config = MemoryConfig.model_validate({**base.model_dump(), **overrides}) if overrides else base
        self._embedder = embedder
        self._pinned: int | None = None
        self._commits = 0
        self._next_step: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._history: OrderedDict[tuple[str, str], list[tuple[int, str, str]]] = OrderedDict()
        self._valid_where: OrderedDict[str, None] = OrderedDict()
        self._has_index: bool | None = None
        self._probe_cache: tuple[int, int, int] | None = None
        self._index_kind: str | None = None
        self._db = self._connect()
        self._table = self._open_or_create()

    @classmethod
    def open(
        cls,
        uri: str | Path | None = None,
        *,
        embedder: TextEmbedder | None = None,
        namespace: str | None = None,
        config: MemoryConfig | None = None,
        **overrides: Any,
    ) -> TrajectoryMemory:
        """Open (creating if needed) the memory at `uri`; creating a table needs an embedder."""
        if uri is not None:
            overrides["uri"] = str(uri)
        if namespace is not None:
            overrides["namespace"] = namespace
        return cls(config, embedder=embedder, **overrides)

    # ------------------------------------------------------------------ connection and schema

    def _connect(self) -> Any:
        cfg = self.config
        interval = (
            None
            if cfg.read_consistency_interval is None
            else timedelta(seconds=cfg.read_consistency_interval)
        )
        kwargs: dict[str, Any] = {"read_consistency_interval": interval}
        if cfg.storage_options:
            kwargs["storage_options"] = dict(cfg.storage_options)
        uri = cfg.uri
        if uri.startswith("db://"):
            import os

            api_key = cfg.api_key.get_secret_value() if cfg.api_key else os.environ.get("LANCEDB_API_KEY")
            if not api_key:
                raise ValueError(f"{uri} is a LanceDB Cloud/Enterprise URI: set api_key or LANCEDB_API_KEY")
            kwargs.update(api_key=api_key, region=cfg.region)
            if cfg.host_override:
                kwargs["host_override"] = cfg.host_override
        elif _is_local(uri):
            uri = str(Path(uri.removeprefix("file://")).expanduser())
        logger.debug("connecting to trajectory memory at %s", uri)
        return lancedb.connect(uri, **kwargs)

    def _open_or_create(self) -> Any:
        cfg = self.config
        table = self._try_open()
        if table is None:
            if self._embedder is None:
                raise EmbedderRequiredError(
                    f"there is no memory table {cfg.table!r} at {cfg.uri}; pass an embedder to create it"
                )
            granularity = cfg.granularity or "step"
            window = cfg.window or (DEFAULT_WINDOW if granularity == "window" else 1)
            schema = arrow_schema(
                int(self._embedder.dim), str(self._embedder.model_name), granularity, window
            )
            try:
                table = self._db.create_table(cfg.table, schema=schema)
                logger.info(
                    "created trajectory memory %s/%s (dim %d)", cfg.uri, cfg.table, self._embedder.dim
                )
            except ValueError as exc:  # created meanwhile by another process
                if "already exists" not in str(exc):
                    raise
                table = self._db.open_table(cfg.table)
        settings = table_settings(table.schema)
        if settings is None:
            raise ValueError(
                f"table {cfg.table!r} at {cfg.uri} is not a hullft trajectory memory (no embedder stamp)"
            )
        self._dim = int(settings[META_DIM])
        self._embedder_name = settings[META_EMBEDDER]
        self._granularity = settings.get(META_GRANULARITY, "step")
        self._window = int(settings.get(META_WINDOW, "1"))
        if self._embedder is not None:
            name, dim = str(self._embedder.model_name), int(self._embedder.dim)
            if name != self._embedder_name or dim != self._dim:
                raise EmbedderMismatchError(
                    f"memory {cfg.uri}/{cfg.table} was written with embedder {self._embedder_name!r} "
                    f"(dim {self._dim}); it cannot be used with {name!r} (dim {dim}). Open it with the "
                    "same embedder, or use another table/uri for the new one."
                )
        if cfg.granularity is not None and cfg.granularity != self._granularity:
            raise ValueError(
                f"memory {cfg.uri}/{cfg.table} stores granularity {self._granularity!r}, "
                f"config asks for {cfg.granularity!r}"
            )
        if cfg.window is not None and self._granularity == "window" and cfg.window != self._window:
            raise ValueError(
                f"memory {cfg.uri}/{cfg.table} stores window {self._window}, config asks for {cfg.window}"
            )
        return table

    def _try_open(self) -> Any:
        try:
            return self._db.open_table(self.config.table)
        except ValueError as exc:
            if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
                return None
            raise
        except FileNotFoundError:
            return None

    # ------------------------------------------------------------------ properties

    @property
    def uri(self) -> str:
        return self.config.uri

    @property
    def table_name(self) -> str:
        return self.config.table

    @property
    def namespace(self) -> str:
        """The default namespace of reads and writes."""
        return self.config.namespace

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def embedder_name(self) -> str:
        return self._embedder_name

    @property
    def embedder(self) -> TextEmbedder | None:
        return self._embedder

    @property
    def granularity(self) -> str:
        return self._granularity

    @property
    def window(self) -> int:
        return self._window

    @property
    def table(self) -> Any:
        """The underlying lancedb table (for inspection; write through the memory's methods)."""
        return self._table

    def __repr__(self) -> str:
        return (
            f"TrajectoryMemory(uri={self.uri!r}, table={self.table_name!r}, namespace={self.namespace!r}, "
            f"embedder={self.embedder_name!r}, dim={self.dim}, granularity={self.granularity!r})"
        )

    def __enter__(self) -> TrajectoryMemory:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the table handle (the data is durable after every write already)."""
        self._table = None
        self._db = None

    def _live(self) -> Any:
        if self._table is None:
            raise RuntimeError("this TrajectoryMemory is closed")
        return self._table

    def _ns(self, namespace: str | None, *, allow_all: bool = False) -> str | None:
        if namespace is None:
            return self.config.namespace
        if allow_all and namespace == ALL_NAMESPACES:
            return None
        return check_namespace(namespace)

    # ------------------------------------------------------------------ embedding

    def _need_embedder(self, why: str) -> TextEmbedder:
        if self._embedder is None:
            raise EmbedderRequiredError(f"{why} needs an embedder; open the memory with embedder=...")
        return self._embedder

    def _embed(self, texts: list[str]) -> np.ndarray:
        embedder = self._need_embedder("embedding text")
        vectors = np.asarray(embedder.encode(list(texts)), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(texts), self._dim):
            raise RuntimeError(
                f"embedder {self._embedder_name!r} returned shape {vectors.shape}, expected ({len(texts)}, {self._dim})"
            )
        norms = np.linalg.norm(vectors, axis=1)
        bad = ~np.isfinite(vectors).all(axis=1) | (norms == 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise RuntimeError(f"embedder returned a NaN/inf or zero vector for text {i}: {texts[i]!r:.80}")
        return vectors / norms[:, None]

    # ------------------------------------------------------------------ writing

    def _check_writable(self) -> Any:
        table = self._live()
        if self._pinned is not None:
            raise MemoryPinnedError(
                f"memory is pinned to version {self._pinned}; call checkout_latest() before writing"
            )
        return table

    def log_step(
        self,
        episode_id: str,
        kind: str,
        text: str,
        *,
        step: int | None = None,
        task: str | None = None,
        namespace: str | None = None,
        reward: float | None = None,
        outcome: str | None = None,
        metadata: dict[str, Any] | None = None,
        vector: np.ndarray | None = None,
        id: str | None = None,
    ) -> str:
        """Log one step (one commit); return the id of its row. `step` None: the next step number."""
        item = Step(
            kind=kind,
            text=text,
            episode_id=episode_id,
            step=step,
            task=task,
            namespace=namespace,
            reward=reward,
            outcome=outcome,
            metadata=metadata,
            vector=vector,
            id=id,
        )
        return self.add([item])[0]

    def log_episode(
        self,
        episode_id: str,
        steps: Iterable[Step | Mapping[str, Any] | tuple[str, str]],
        *,
        task: str | None = None,
        namespace: str | None = None,
        reward: float | None = None,
        outcome: str | None = None,
        metadata: dict[str, Any] | None = None,
        progress: bool = False,
    ) -> list[str]:
        """Log a whole episode in one batch; episode-level task/reward/outcome/metadata fill each step."""
        episode_id = check_name(episode_id, "episode_id")
        reward = check_reward(reward)
        outcome = check_outcome(outcome)
        items: list[Step] = []
        for i, raw in enumerate(steps):
            try:
                item = _as_step(raw)
                item = item if isinstance(item, Step) else Step.from_mapping(item)
            except (TypeError, ValueError) as exc:
                raise InvalidStepError(f"row {i}: {exc}", index=i) from exc
            if item.episode_id is not None and item.episode_id != episode_id:
                raise InvalidStepError(
                    f"row {i}: episode_id {item.episode_id!r} differs from the episode {episode_id!r}",
                    index=i,
                )
            merged = {**(metadata or {}), **(item.metadata or {})} if (metadata or item.metadata) else None
            items.append(
                Step(
                    kind=item.kind,
                    text=item.text,
                    episode_id=episode_id,
                    step=item.step,
                    task=item.task if item.task is not None else task,
                    namespace=item.namespace if item.namespace is not None else namespace,
                    reward=item.reward if item.reward is not None else reward,
                    outcome=item.outcome if item.outcome is not None else outcome,
                    metadata=merged,
                    id=item.id,
                    vector=item.vector,
                    created_at=item.created_at,
                )
            )
        return self.add(items, progress=progress)

    def add(
        self,
        steps: Iterable[Step | Mapping[str, Any] | tuple[str, str]],
        *,
        namespace: str | None = None,
        episode_id: str | None = None,
        task: str | None = None,
        vectors: np.ndarray | None = None,
        progress: bool = False,
    ) -> list[str]:
        """Validate, embed (in batches) and append steps; return the ids of the rows written.

        Every step is validated before anything is embedded or written: one bad step rejects the
        whole call with an `InvalidStepError` naming its row. `vectors` (n, d) gives precomputed
        embeddings of the step texts (granularity 'step' only). Rows are committed in chunks of
        `config.write_batch_size`, each chunk atomically.
        """
        table = self._check_writable()
        items = list(steps)
        if not items:
            return []
        if vectors is not None:
            vectors = np.asarray(vectors, dtype=np.float32)
            if vectors.ndim != 2 or vectors.shape[0] != len(items):
                raise InvalidStepError(
                    f"vectors must have shape ({len(items)}, {self._dim}), got {vectors.shape}"
                )
        default_ns = self._ns(namespace)
        now = datetime.now(timezone.utc)
        checked: list[CheckedStep] = []
        given_ids: list[bool] = []
        for i, raw in enumerate(items):
            try:
                item = _as_step(raw)
                given_ids.append((item.id if isinstance(item, Step) else item.get("id")) is not None)
                one = check_step(
                    item,
                    dim=self._dim,
                    kinds=self.config.kinds,
                    default_namespace=default_ns,
                    default_episode=episode_id,
                    default_task=task,
                    now=now,
                )
                if vectors is not None:
                    if one.vector is not None:
                        raise ValueError("a vector is given both in the step and in vectors=")
                    one.vector = check_vector(vectors[i], self._dim, what=f"vectors[{i}]")
                if one.vector is not None and self._granularity == "window":
                    raise ValueError(
                        "precomputed vectors cannot be used with granularity 'window' "
                        "(each row embeds the transcript of its window)"
                    )
            except (TypeError, ValueError) as exc:
                raise InvalidStepError(f"row {i}{_describe(raw)}: {exc}", index=i) from exc
            checked.append(one)
        self._check_unique(table, checked, given_ids)
        self._number_steps(table, checked)
        rows, row_vectors = self._build_rows(table, checked)
        ids = self._write(table, rows, row_vectors, progress=progress)
        self._remember(checked)
        self._after_write()
        return ids

    def _check_unique(self, table: Any, checked: list[CheckedStep], given: list[bool]) -> None:
        seen: dict[str, int] = {}
        keys: dict[tuple[str, str, int], int] = {}
        for i, row in enumerate(checked):
            if row.id in seen:
                raise InvalidStepError(f"row {i}: id {row.id!r} repeats row {seen[row.id]}", index=i)
            seen[row.id] = i
            if row.step is not None:
                key = (row.namespace, row.episode_id, row.step)
                if key in keys:
                    raise InvalidStepError(
                        f"row {i}: step {row.step} of episode {row.episode_id!r} repeats row {keys[key]}",
                        index=i,
                    )
                keys[key] = i
        explicit = [row.id for row, g in zip(checked, given, strict=True) if g]
        if explicit:
            existing = self._select(table, scope(None, ids=explicit), ["id"], limit=len(explicit))
            if existing.num_rows:
                taken = existing["id"].to_pylist()
                i = next(j for j, row in enumerate(checked) if row.id in set(taken))
                raise InvalidStepError(f"row {i}: id {checked[i].id!r} already exists in the memory", index=i)

    def _number_steps(self, table: Any, checked: list[CheckedStep]) -> None:
        missing = {(r.namespace, r.episode_id) for r in checked if r.step is None}
        if not missing:
            return
        unknown = [key for key in missing if key not in self._next_step]
        if unknown:
            by_ns: dict[str, list[str]] = {}
            for ns, ep in unknown:
                by_ns.setdefault(ns, []).append(ep)
            for ns, episodes in by_ns.items():
                found = self._select(table, scope(ns, episodes=episodes), ["episode_id", "step"])
                last: dict[str, int] = {}
                for ep, st in zip(found["episode_id"].to_pylist(), found["step"].to_pylist(), strict=True):
                    last[ep] = max(last.get(ep, -1), st)
                for ep in episodes:
                    self._cache(self._next_step, (ns, ep), last.get(ep, -1) + 1)
        counters = {key: self._next_step[key] for key in missing}
        for row in checked:  # explicit steps in the batch move the counter too
            key = (row.namespace, row.episode_id)
            if key in counters and row.step is not None:
                counters[key] = max(counters[key], row.step + 1)
        for row in checked:
            if row.step is None:
                key = (row.namespace, row.episode_id)
                row.step = counters[key]
                counters[key] += 1

    @staticmethod
    def _cache(cache: OrderedDict, key: Any, value: Any) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > _CACHE_EPISODES:
            cache.popitem(last=False)

    def _base_row(self, row: CheckedStep, text: str, kind: str, metadata: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": row.id,
            "namespace": row.namespace,
            "task": row.task,
            "episode_id": row.episode_id,
            "step": row.step,
            "kind": kind,
            "text": text,
            "n_bytes": len(text.encode("utf-8")),
            "created_at": row.created_at,
            "reward": row.reward,
            "outcome": row.outcome,
            "metadata": json.dumps(metadata, ensure_ascii=False, allow_nan=False),
        }

    def _build_rows(
        self, table: Any, checked: list[CheckedStep]
    ) -> tuple[list[dict[str, Any]], list[np.ndarray | None]]:
        if self._granularity == "step":
            rows = [self._base_row(r, r.text, r.kind, r.metadata) for r in checked]
            return rows, [r.vector for r in checked]
        w = self._window
        order = sorted(
            range(len(checked)), key=lambda i: (checked[i].namespace, checked[i].episode_id, checked[i].step)
        )
        histories: dict[tuple[str, str], list[tuple[int, str, str]]] = {}
        rows: list[dict[str, Any] | None] = [None] * len(checked)
        for i in order:
            r = checked[i]
            key = (r.namespace, r.episode_id)
            if key not in histories:
                histories[key] = self._load_history(table, key, r.step)
            history = histories[key]
            window = [h for h in history if r.step - w < h[0] < r.step] + [(r.step, r.kind, r.text)]
            history.append((r.step, r.kind, r.text))
            del history[: max(0, len(history) - w)]
            info = {
                "first_step": window[0][0],
                "last_step": r.step,
                "kinds": [h[1] for h in window],
                "last_kind": r.kind,
                "last_text": r.text,
            }
            rows[i] = self._base_row(r, render_window(window), WINDOW_KIND, {**r.metadata, WINDOW_META: info})
        return [r for r in rows if r is not None], [None] * len(checked)

    def _load_history(self, table: Any, key: tuple[str, str], first: int) -> list[tuple[int, str, str]]:
        w = self._window
        cached = self._history.get(key)
        if cached is not None:
            return [h for h in cached if first - w < h[0] < first]
        if first == 0 or w == 1:
            return []
        found = self._select(
            table,
            scope(key[0], episode_id=key[1], kind=WINDOW_KIND, step_range=(max(0, first - w + 1), first)),
            ["step", "metadata"],
        )
        history = []
        for step, meta in zip(found["step"].to_pylist(), found["metadata"].to_pylist(), strict=True):
            info = json.loads(meta).get(WINDOW_META, {})
            if "last_kind" in info and "last_text" in info:
                history.append((int(step), info["last_kind"], info["last_text"]))
        return sorted(history)

    def _remember(self, checked: list[CheckedStep]) -> None:
        for r in checked:
            key = (r.namespace, r.episode_id)
            if r.step + 1 > self._next_step.get(key, 0):
                self._cache(self._next_step, key, r.step + 1)
            if self._granularity == "window":
                history = list(self._history.get(key, []))
                history = [h for h in history if h[0] != r.step] + [(r.step, r.kind, r.text)]
                history.sort()
                self._cache(self._history, key, history[-max(1, self._window - 1) :])

    def _write(
        self, table: Any, rows: list[dict[str, Any]], row_vectors: list[np.ndarray | None], *, progress: bool
    ) -> list[str]:
        schema = table.schema
        chunk = self.config.write_batch_size
        ids: list[str] = []
        with tqdm(total=len(rows), desc="logging", unit="row", disable=not progress, leave=False) as bar:
            for start in range(0, len(rows), chunk):
                part = rows[start : start + chunk]
                vecs = row_vectors[start : start + chunk]
                matrix = np.empty((len(part), self._dim), dtype=np.float32)
                todo = [j for j, v in enumerate(vecs) if v is None]
                for j, v in enumerate(vecs):
                    if v is not None:
                        matrix[j] = v
                bs = self.config.embed_batch_size
                for b in range(0, len(todo), bs):
                    sel = todo[b : b + bs]
                    matrix[sel] = self._embed([part[j]["text"] for j in sel])
                    bar.update(len(sel))
                data = rows_to_arrow(part, matrix, schema)
                self._commit("append", lambda data=data: table.add(data))
                bar.update(len(part) - len(todo))
                ids.extend(r["id"] for r in part)
        return ids

    def _commit(self, what: str, fn: Any) -> Any:
        delay = 0.05
        retries = self.config.commit_retries
        for attempt in range(retries + 1):
            try:
                return fn()
            except Exception as exc:  # lancedb raises RuntimeError/OSError/ValueError subclasses
                if attempt >= retries or not _is_conflict(exc):
                    raise
                logger.warning(
                    "%s hit a commit conflict (attempt %d/%d): %s", what, attempt + 1, retries, exc
                )
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
                if self._table is not None and self._pinned is None:
                    self._table.checkout_latest()  # retry against the version that won
        raise AssertionError("unreachable")

    def _after_write(self) -> None:
        self._commits += 1
        every = self.config.optimize_every
        if every and self._commits % every == 0:
            try:
                self.optimize()
            except Exception as exc:  # maintenance must never fail a write that is already committed
                logger.warning("automatic optimize() failed (the write itself is committed): %s", exc)
            return
        self._maybe_index()

    def finish_episode(
        self,
        episode_id: str,
        *,
        reward: float | None = None,
        outcome: str | None = None,
        namespace: str | None = None,
    ) -> int:
        """Set the reward and/or outcome of every row of an episode; return the rows updated."""
        table = self._check_writable()
        values: dict[str, Any] = {}
        if reward is not None:
            values["reward"] = check_reward(reward)
        if outcome is not None:
            values["outcome"] = check_outcome(outcome)
        if not values:
            raise ValueError("finish_episode needs a reward and/or an outcome")
        where = scope(self._ns(namespace), episode_id=check_name(episode_id, "episode_id"))
        result = self._commit("update", lambda: table.update(where=where, values=values))
        self._after_write()
        return int(getattr(result, "rows_updated", 0))

    # ------------------------------------------------------------------ reading

    def _select(
        self, table: Any, where: str | None, columns: list[str], limit: int | None = None
    ) -> pa.Table:
        query = table.search()
        if where is not None:
            query = query.where(where)
        return query.select(columns).limit(limit).to_arrow()

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
            self._cache(self._valid_where, clause, None)
        return full

    def _query_vector(self, vector: Any, context: str | None) -> np.ndarray:
        if isinstance(vector, str):
            if context is not None:
                raise ValueError("pass either a query vector or a context text, not both")
            context, vector = vector, None
        if vector is not None and context is not None:
            raise ValueError("pass either vector= or context=, not both")
        if vector is None:
            if context is None:
                raise ValueError("candidates() needs a query: vector= (np.ndarray) or context= (str)")
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
    ) -> CandidatePool:
        """The k rows nearest the query, within one namespace, as the adapter's candidate pool.

        The query is `vector` (unit-normalised here) or `context`, embedded with the memory's
        embedder (a str passed as `vector` is taken as the context). `task` restricts to a task,
        `exclude_episode` drops an episode (the current one, so it cannot leak into its own
        training set), `where` adds a SQL filter that can only narrow the result. Similarities are
        cosines; each row's metadata holds its `id`, `namespace`, `distance` (1 - cosine) and the
        columns named in `fields` (a list, or "all"; each one costs about a millisecond of latency
        at 100k rows, so none by default). `exact` skips the vector index (ground truth). An empty table
        or an unknown namespace gives an empty pool.
        """
        table = self._live()
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        query = self._query_vector(vector, context)
        ns = self._ns(namespace)
        if task is not None:
            task = check_name(task, "task")
        if exclude_episode is not None:
            exclude_episode = check_name(exclude_episode, "exclude_episode")
        columns = self._candidate_columns(fields)
        filt = self._check_where(table, where, scope(ns, task=task, exclude_episode=exclude_episode))

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
                raise ValueError(
                    f"unknown fields {unknown}; expected some of {list(SCALAR_COLUMNS)} or 'all'"
                )
        return ["id", "text", "vector", *[c for c in extra if c not in ("id", "text", "vector")], "_distance"]

    def _vector_index(self, table: Any) -> Any:
        for index in table.list_indices():
            if list(index.columns) == ["vector"]:
                return index
        return None

    def _probes(self, table: Any, k: int) -> int | None:
        """IVF partitions to probe (None: no IVF index): enough to scan about
        `probe_rows_per_k * k` rows, at least `min_nprobes`, unless `nprobes` is set."""
        version = table.version
        if self._probe_cache is None or self._probe_cache[0] != version:
            index = self._vector_index(table)
            self._index_kind = None if index is None else _index_type_name(index)
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

    @staticmethod
    def _records(result: pa.Table) -> list[dict[str, Any]]:
        columns = [c for c in SCALAR_COLUMNS if c in result.column_names]
        data = {c: result[c].to_pylist() for c in columns}
        records = []
        for i in range(result.num_rows):
            rec = {c: data[c][i] for c in columns}
            if "metadata" in rec:
                rec["metadata"] = json.loads(rec["metadata"]) if rec["metadata"] else {}
            records.append(rec)
        return records

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
        found = self._select(
            table, scope(self._ns(namespace, allow_all=True), ids=wanted), columns, limit=len(wanted)
        )
        records = {r["id"]: r for r in self._records(found)}
        if with_vectors:
            for r, v in zip(found["id"].to_pylist(), found["vector"].to_pylist(), strict=True):
                records[r]["vector"] = np.asarray(v, dtype=np.float32)
        if single:
            return records.get(wanted[0])
        return [records[i] for i in wanted if i in records]

    def count(
        self,
        namespace: str | None = None,
        *,
        task: str | None = None,
        episode_id: str | None = None,
        where: str | None = None,
    ) -> int:
        """Rows in a namespace (default: the memory's; '*' counts every namespace)."""
        table = self._live()
        base = scope(
            self._ns(namespace, allow_all=True),
            task=None if task is None else check_name(task, "task"),
            episode_id=None if episode_id is None else check_name(episode_id, "episode_id"),
        )
        filt = self._check_where(table, where, base)
        return int(table.count_rows(filt) if filt else table.count_rows())

    def episodes(self, namespace: str | None = None, *, task: str | None = None) -> list[EpisodeSummary]:
        """Summaries of the logged episodes of a namespace ('*': all), oldest first."""
        table = self._live()
        base = scope(
            self._ns(namespace, allow_all=True), task=None if task is None else check_name(task, "task")
        )
        found = self._select(
            table, base, ["namespace", "episode_id", "task", "step", "reward", "outcome", "created_at"]
        )
        if found.num_rows == 0:
            return []
        grouped = found.group_by(["namespace", "episode_id"]).aggregate(
            [
                ("step", "count"),
                ("step", "min"),
                ("step", "max"),
                ("task", "max"),
                ("reward", "max"),
                ("outcome", "max"),
                ("created_at", "min"),
                ("created_at", "max"),
            ]
        )
        out = []
        for r in grouped.to_pylist():
            out.append(
                EpisodeSummary(
                    namespace=r["namespace"],
                    episode_id=r["episode_id"],
                    task=r["task_max"],
                    rows=int(r["step_count"]),
                    first_step=int(r["step_min"]),
                    last_step=int(r["step_max"]),
                    reward=r["reward_max"],
                    outcome=r["outcome_max"],
                    started_at=r["created_at_min"],
                    ended_at=r["created_at_max"],
                )
            )
        out.sort(key=lambda e: (e.started_at, e.namespace, e.episode_id))
        return out

    def stats(self, namespace: str | None = ALL_NAMESPACES) -> dict[str, Any]:
        """What the memory holds: rows, episodes, namespaces, kinds, bytes, index, version, embedder."""
        table = self._live()
        ns = self._ns(namespace, allow_all=True)
        found = self._select(table, scope(ns), ["namespace", "episode_id", "kind", "n_bytes"])
        namespaces: dict[str, int] = {}
        kinds: dict[str, int] = {}
        if found.num_rows:
            for r in found.group_by("namespace").aggregate([("n_bytes", "count")]).to_pylist():
                namespaces[r["namespace"]] = int(r["n_bytes_count"])
            for r in found.group_by("kind").aggregate([("n_bytes", "count")]).to_pylist():
                kinds[r["kind"]] = int(r["n_bytes_count"])
            episodes = found.group_by(["namespace", "episode_id"]).aggregate([]).num_rows
            text_bytes = int(pc.sum(found["n_bytes"]).as_py())
        else:
            episodes, text_bytes = 0, 0
        index = self._vector_index(table)
        index_info = None
        if index is not None:
            info: dict[str, Any] = {"type": _index_type_name(index), "name": index.name}
            try:
                istats = table.index_stats(index.name)
                if istats is not None:
                    info["indexed_rows"] = int(istats.num_indexed_rows)
                    info["unindexed_rows"] = int(istats.num_unindexed_rows)
            except Exception as exc:  # not every backend reports index statistics
                logger.debug("index_stats failed: %s", exc)
            index_info = info
        disk = None
        try:
            tstats = table.stats()
            disk = int(tstats["total_bytes"]) if isinstance(tstats, Mapping) else int(tstats.total_bytes)
            fragments = tstats["fragment_stats"]["num_fragments"] if isinstance(tstats, Mapping) else None
        except Exception as exc:  # remote tables may not report storage statistics
            logger.debug("table.stats failed: %s", exc)
            fragments = None
        return {
            "uri": self.uri,
            "table": self.table_name,
            "namespace": namespace if namespace is not None else self.namespace,
            "version": self.version,
            "pinned": self._pinned is not None,
            "embedder": self._embedder_name,
            "dim": self._dim,
            "granularity": self._granularity,
            "window": self._window,
            "rows": int(found.num_rows),
            "total_rows": int(table.count_rows()),
            "episodes": int(episodes),
            "namespaces": dict(sorted(namespaces.items())),
            "kinds": dict(sorted(kinds.items())),
            "text_bytes": text_bytes,
            "disk_bytes": disk,
            "fragments": fragments,
            "index": index_info,
        }

    # ------------------------------------------------------------------ forgetting

    def forget(
        self,
        ids: str | Sequence[str] | None = None,
        *,
        episode_id: str | None = None,
        task: str | None = None,
        namespace: str | None = None,
    ) -> int:
        """Delete rows by ids, episode, task (ANDed) within a namespace; return how many were deleted.

        With no ids/episode/task it deletes the whole namespace, which must then be named
        explicitly (`namespace=...`; the default namespace is never wiped implicitly).
        """
        table = self._check_writable()
        if ids is None and episode_id is None and task is None:
            if namespace is None:
                raise ValueError(
                    "forget() with no ids, episode_id or task deletes a whole namespace; "
                    "pass namespace=... explicitly to do that"
                )
        ns = check_namespace(namespace) if namespace is not None else self.config.namespace
        id_list = None
        if ids is not None:
            id_list = [check_name(i, "id") for i in ([ids] if isinstance(ids, str) else list(ids))]
            if not id_list:
                return 0
        where = scope(
            ns,
            ids=id_list,
            episode_id=None if episode_id is None else check_name(episode_id, "episode_id"),
            task=None if task is None else check_name(task, "task"),
        )
        before = int(table.count_rows(where))
        if before == 0:
            return 0
        result = self._commit("delete", lambda: table.delete(where))
        deleted = getattr(result, "num_deleted_rows", None)
        for key in [k for k in self._next_step if k[0] == ns]:
            if episode_id is None or key[1] == episode_id:
                self._next_step.pop(key, None)
                self._history.pop(key, None)
        self._after_write()
        logger.info("forgot %s rows in namespace %r", deleted if deleted is not None else before, ns)
        return int(deleted) if deleted is not None else before

    # ------------------------------------------------------------------ versions

    @property
    def version(self) -> int:
        """The table version reads see (the pinned one after `checkout`)."""
        return int(self._live().version)

    @property
    def pinned(self) -> int | None:
        """The version this memory is pinned to, or None when it follows the latest."""
        return self._pinned

    def versions(self) -> list[dict[str, Any]]:
        """Every version still on storage: {'version', 'timestamp'}."""
        return [
            {"version": int(v["version"]), "timestamp": v["timestamp"]} for v in self._live().list_versions()
        ]

    def checkout(self, version: int) -> None:
        """Pin reads to `version` (an evaluation then sees a fixed snapshot); writes are refused."""
        if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
            raise ValueError(f"version must be an integer >= 1, got {version!r}")
        try:
            self._live().checkout(int(version))
        except ValueError as exc:
            raise ValueError(f"cannot check out version {version} of the memory: {exc}") from exc
        self._pinned = int(version)
        self._has_index = None

    def checkout_latest(self) -> None:
        """Unpin: follow the latest version again."""
        self._live().checkout_latest()
        self._pinned = None
        self._has_index = None

    @contextmanager
    def pinned_to(self, version: int | None = None) -> Iterator[TrajectoryMemory]:
        """`with memory.pinned_to(v):` reads see version v (default: the current one) inside the block."""
        target = self.version if version is None else version
        self.checkout(target)
        try:
            yield self
        finally:
            self.checkout_latest()

    def refresh(self) -> None:
        """See other processes' commits now (otherwise within `read_consistency_interval`)."""
        if self._pinned is None:
            self._live().checkout_latest()

    # ------------------------------------------------------------------ maintenance

    def optimize(self, *, cleanup_older_than: timedelta | float | None = None) -> dict[str, Any]:
        """Compact small fragments, fold new rows into the indexes, delete versions older than
        `cleanup_older_than` (seconds or timedelta; default `config.cleanup_older_than_s`), build
        or retrain the vector index when due. Runs automatically every `optimize_every` commits."""
        table = self._check_writable()
        if cleanup_older_than is None:
            cleanup = timedelta(seconds=self.config.cleanup_older_than_s)
        elif isinstance(cleanup_older_than, timedelta):
            cleanup = cleanup_older_than
        else:
            cleanup = timedelta(seconds=float(cleanup_older_than))
        before = len(table.list_versions())
        start = time.perf_counter()
        self._commit("optimize", lambda: table.optimize(cleanup_older_than=cleanup))
        after = len(table.list_versions())
        indexed = self._maybe_index(retrain=True)
        seconds = time.perf_counter() - start
        logger.info("optimized memory in %.2f s (versions %d -> %d)", seconds, before, after)
        return {
            "versions_before": before,
            "versions_after": after,
            "index_built": indexed,
            "seconds": seconds,
        }

    def _maybe_index(self, *, retrain: bool = False) -> bool:
        table = self._table
        if table is None or self._pinned is not None:
            return False
        rows = table.count_rows()
        if rows < max(self.config.index_threshold, _MIN_INDEX_ROWS):
            return False
        if self._has_index and not retrain:
            return False
        index = self._vector_index(table)
        self._has_index = index is not None
        if index is not None:
            if not retrain:
                return False
            meta = table.schema.field("vector").metadata or {}
            trained = int(meta.get(META_INDEX_ROWS.encode(), b"0") or 0)
            if trained and rows < self.config.reindex_growth * trained:
                return False
        try:
            self.create_index()
        except Exception as exc:  # another process may be indexing; the next write retries
            logger.warning("building the vector index failed (queries stay exact): %s", exc)
            return False
        return True

    def create_index(self) -> dict[str, Any]:
        """(Re)build the vector index (`config.index_type`, cosine) and scalar indexes on
        namespace, kind, task, episode_id and id. Called automatically past `index_threshold` rows."""
        from lancedb import index as lidx

        table = self._check_writable()
        rows = table.count_rows()
        if rows < _MIN_INDEX_ROWS:
            raise ValueError(f"the memory holds {rows} rows; a vector index needs at least {_MIN_INDEX_ROWS}")
        params = dict(self.config.index_params)
        kind = self.config.index_type
        classes = {
            "IVF_FLAT": lidx.IvfFlat,
            "IVF_SQ": lidx.IvfSq,
            "IVF_PQ": lidx.IvfPq,
            "IVF_RQ": lidx.IvfRq,
            "IVF_HNSW_SQ": lidx.HnswSq,
            "IVF_HNSW_PQ": lidx.HnswPq,
        }
        if "num_partitions" not in params:
            if "HNSW" in kind:
                params["num_partitions"] = 1
            else:
                params["num_partitions"] = int(max(1, min(4096, rows // 32, round(math.sqrt(rows)))))
        start = time.perf_counter()
        self._commit(
            "create_index",
            lambda: table.create_index(
                "vector", config=classes[kind](distance_type="cosine", **params), replace=True
            ),
        )
        for column, scalar in (
            ("namespace", lidx.Bitmap()),
            ("kind", lidx.Bitmap()),
            ("task", lidx.BTree()),
            ("episode_id", lidx.BTree()),
            ("id", lidx.BTree()),
        ):
            self._commit(
                "create_scalar_index",
                lambda c=column, cfg=scalar: table.create_index(c, config=cfg, replace=True),
            )
        try:
            table.update_field_metadata(
                {
                    "path": "vector",
                    "metadata": {
                        META_INDEX_ROWS: str(rows),
                        META_INDEX_PARTITIONS: str(params["num_partitions"]),
                    },
                }
            )
        except Exception as exc:  # only a retraining hint; not every backend supports it
            logger.debug("could not record index size: %s", exc)
        self._has_index = True
        seconds = time.perf_counter() - start
        logger.info("built %s index over %d rows in %.1f s (%s)", kind, rows, seconds, params)
        return {"type": kind, "rows": rows, "params": params, "seconds": seconds}
