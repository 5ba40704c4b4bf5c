"""The trajectory table: its LanceDB pydantic row model, the input `Step`, and row validation.

One row is one embedded sequence an adapter can train on: a single agent step (granularity
'step') or a window of consecutive steps rendered as one transcript (granularity 'window').
The embedder's model name and dimension, the granularity and the window size are stored in the
table's schema metadata, so a memory can never be reopened with an incompatible embedder.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pydantic
from lancedb.pydantic import LanceModel, Vector

from hullft_agent.errors import InvalidArgumentError, InvalidTypeError

SCHEMA_VERSION = "1"
#: Keys of the table-level schema metadata.
META_SCHEMA = "hullft.schema_version"
META_EMBEDDER = "hullft.embedder"
META_DIM = "hullft.dim"
META_GRANULARITY = "hullft.granularity"
META_WINDOW = "hullft.window"
#: Field metadata of the vector column: rows in the table when the vector index was trained.
META_INDEX_ROWS = "hullft.index_trained_rows"

#: Kind of rows that hold a window of steps.
WINDOW_KIND = "window"
#: Reserved metadata key of window rows: {"first_step", "last_step", "kinds", "last_kind", "last_text"}.
WINDOW_META = "_window"
#: Passed as a namespace to the read methods that accept it, selects every namespace.
ALL_NAMESPACES = "*"

COLUMNS = (
    "id",
    "namespace",
    "task",
    "episode_id",
    "step",
    "kind",
    "text",
    "vector",
    "n_bytes",
    "created_at",
    "reward",
    "outcome",
    "metadata",
)
#: Every column except the vector.
SCALAR_COLUMNS = tuple(c for c in COLUMNS if c != "vector")

_MAX_NAME = 256
#: Step numbers are stored as int64.
MAX_STEP = 2**63 - 1


@lru_cache(maxsize=32)
def trajectory_model(dim: int) -> type[LanceModel]:
    """The LanceDB pydantic row model for embeddings of dimension `dim`."""
    if dim < 1:
        raise InvalidArgumentError(f"embedding dimension must be >= 1, got {dim}")
    return pydantic.create_model(
        f"TrajectoryRow{dim}",
        __base__=LanceModel,
        __doc__="One embedded sequence of an agent trajectory (a step, or a window of steps).",
        id=(str, ...),
        namespace=(str, ...),
        task=(str | None, None),
        episode_id=(str, ...),
        step=(int, ...),
        kind=(str, ...),
        text=(str, ...),
        vector=(Vector(dim), ...),
        n_bytes=(int, ...),
        created_at=(datetime, ...),
        reward=(float | None, None),
        outcome=(str | None, None),
        metadata=(str, "{}"),
    )


def arrow_schema(dim: int, embedder_name: str, granularity: str, window: int) -> pa.Schema:
    """Arrow schema of the table (from the pydantic model), with the embedder stamped on it."""
    base = trajectory_model(dim).to_arrow_schema()
    fields_ = []
    for f in base:
        if f.name == "created_at":
            f = pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False)
        fields_.append(f)
    metadata = {
        META_SCHEMA: SCHEMA_VERSION,
        META_EMBEDDER: embedder_name,
        META_DIM: str(dim),
        META_GRANULARITY: granularity,
        META_WINDOW: str(window),
    }
    return pa.schema(fields_, metadata=metadata)


def table_settings(schema: pa.Schema) -> dict[str, str] | None:
    """The hullft settings stamped on a table's schema, or None when it is not a trajectory table."""
    raw = schema.metadata or {}
    meta = {k.decode(): v.decode() for k, v in raw.items()}
    if META_EMBEDDER not in meta or META_DIM not in meta:
        return None
    return meta


def check_unicode(value: str, what: str) -> str:
    """Reject a string UTF-8 cannot encode (a lone surrogate, e.g. from a JSON `"\\ud800"` escape)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(
            f"{what} is not valid Unicode: a lone surrogate {value[exc.start]!r} at position {exc.start}"
        ) from None
    return value


def check_namespace(value: Any, what: str = "namespace") -> str:
    """A namespace is a non-empty string of at most 256 printable characters, other than '*'."""
    value = check_name(value, what)
    if value == ALL_NAMESPACES:
        raise InvalidArgumentError(f"{what} {ALL_NAMESPACES!r} is reserved (it selects every namespace in reads)")
    return value


def check_name(value: Any, what: str) -> str:
    """Episode ids, tasks and row ids: non-empty strings of at most 256 characters, no control chars."""
    if not isinstance(value, str):
        raise InvalidTypeError(f"{what} must be a str, got {type(value).__name__}")
    check_unicode(value, what)
    if not value.strip() or len(value) > _MAX_NAME or not value.isprintable():
        raise InvalidArgumentError(f"{what} must be 1-{_MAX_NAME} printable characters, got {value!r:.80}")
    return value


@dataclass
class Step:
    """One step of an agent episode, as given to `TrajectoryMemory.add`.

    `step` None numbers the step after the last one logged for its episode. `vector` (optional)
    is a precomputed embedding of `text`; otherwise the memory's embedder embeds it.
    """

    kind: str
    text: str
    episode_id: str | None = None
    step: int | None = None
    task: str | None = None
    namespace: str | None = None
    reward: float | None = None
    outcome: str | None = None
    metadata: dict[str, Any] | None = None
    id: str | None = None
    vector: Any = None
    created_at: datetime | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Step:
        if not isinstance(data, Mapping):
            raise InvalidTypeError(f"a step must be a Step or a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgumentError(f"unknown step field(s) {unknown}; expected some of {sorted(known)}")
        if "kind" not in data or "text" not in data:
            raise InvalidArgumentError("a step needs at least 'kind' and 'text'")
        return cls(**dict(data))


@dataclass
class CheckedStep:
    """A validated step with every field resolved (namespace, episode, step number)."""

    kind: str
    text: str
    episode_id: str
    step: int | None
    task: str | None
    namespace: str
    reward: float | None
    outcome: str | None
    metadata: dict[str, Any]
    id: str
    vector: np.ndarray | None
    created_at: datetime


def _check_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidTypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < 0:
        raise InvalidArgumentError(f"{what} must be >= 0, got {value}")
    if value > MAX_STEP:
        raise InvalidArgumentError(f"{what} must be at most {MAX_STEP}, got {value}")
    return int(value)


def check_text(value: Any, what: str = "text") -> str:
    if not isinstance(value, str):
        raise InvalidTypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise InvalidArgumentError(f"{what} is empty; a step's text must contain non-whitespace characters")
    return check_unicode(value, what)


def check_reward(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidTypeError(f"reward must be a number or None, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidArgumentError("reward must be finite, got an integer too large for a float") from None
    if not math.isfinite(number):
        raise InvalidArgumentError(f"reward must be finite, got {value}")
    return number


def check_outcome(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidTypeError(f"outcome must be a str or None, got {type(value).__name__}")
    return check_unicode(value, "outcome")


def check_metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidTypeError(f"metadata must be a JSON object (dict) or None, got {type(value).__name__}")
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"metadata is not JSON-serialisable: {exc}") from exc
    check_unicode(text, "metadata")
    if WINDOW_META in value:
        raise InvalidArgumentError(f"metadata key {WINDOW_META!r} is reserved for window rows")
    return dict(value)


def check_vector(value: Any, dim: int, what: str = "vector") -> np.ndarray:
    """A finite, non-zero vector of dimension `dim`, returned unit-normalised as float32."""
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidTypeError(f"{what} must be a numeric array, got {type(value).__name__}") from exc
    if array.ndim != 1 or array.shape[0] != dim:
        raise InvalidArgumentError(f"{what} must have shape ({dim},) (the embedder's dimension), got {array.shape}")
    if not np.isfinite(array).all():
        raise InvalidArgumentError(f"{what} contains NaN or inf")
    norm = float(np.linalg.norm(array))
    if norm == 0.0:
        raise InvalidArgumentError(f"{what} is all zeros and cannot be normalised")
    return array / norm


def check_step(
    step: Step | Mapping[str, Any],
    *,
    dim: int,
    kinds: tuple[str, ...],
    default_namespace: str,
    default_episode: str | None = None,
    default_task: str | None = None,
    now: datetime | None = None,
) -> CheckedStep:
    """Validate one step; raise TypeError/ValueError naming the bad field."""
    if not isinstance(step, Step):
        step = Step.from_mapping(step)
    if not isinstance(step.kind, str) or step.kind not in kinds:
        raise InvalidArgumentError(f"unknown kind {step.kind!r}; expected one of {list(kinds)}")
    text = check_text(step.text)
    episode = step.episode_id if step.episode_id is not None else default_episode
    if episode is None:
        raise InvalidArgumentError("episode_id is missing")
    episode = check_name(episode, "episode_id")
    number = None if step.step is None else _check_int(step.step, "step")
    task = step.task if step.task is not None else default_task
    if task is not None:
        task = check_name(task, "task")
    namespace = check_namespace(step.namespace if step.namespace is not None else default_namespace)
    row_id = uuid.uuid4().hex if step.id is None else check_name(step.id, "id")
    vector = None if step.vector is None else check_vector(step.vector, dim)
    created = step.created_at
    if created is None:
        created = now or datetime.now(timezone.utc)
    elif not isinstance(created, datetime):
        raise InvalidTypeError(f"created_at must be a datetime, got {type(created).__name__}")
    elif created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return CheckedStep(
        kind=step.kind,
        text=text,
        episode_id=episode,
        step=number,
        task=task,
        namespace=namespace,
        reward=check_reward(step.reward),
        outcome=check_outcome(step.outcome),
        metadata=check_metadata(step.metadata),
        id=row_id,
        vector=vector,
        created_at=created,
    )


def render_window(steps: list[tuple[int, str, str]]) -> str:
    """The transcript of consecutive (step, kind, text) triples: one 'kind: text' line per step."""
    return "\n".join(f"{kind}: {text}" for _, kind, text in steps)


def rows_to_arrow(rows: list[dict[str, Any]], vectors: np.ndarray, schema: pa.Schema) -> pa.Table:
    """Columnar arrow table of validated rows (dicts of scalar columns) and their (n, d) vectors."""
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
    columns: dict[str, pa.Array] = {
        "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
    }
    for name in SCALAR_COLUMNS:
        values = [r[name] for r in rows]
        columns[name] = pa.array(values, type=schema.field(name).type)
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema.remove_metadata())
