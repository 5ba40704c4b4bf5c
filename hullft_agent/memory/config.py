"""Settings of a `TrajectoryMemory`: where it lives, how rows are cut, when it indexes and compacts."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from hullft_agent.config import StrictConfig
from hullft_agent.errors import InvalidArgumentError

#: Environment variable that overrides the default memory location.
MEMORY_URI_ENV = "HULLFT_MEMORY_URI"
#: Default location: an embedded LanceDB database in the working directory.
DEFAULT_MEMORY_URI = "./hullft_memory"

IndexType = Literal["IVF_FLAT", "IVF_SQ", "IVF_PQ", "IVF_RQ", "IVF_HNSW_SQ", "IVF_HNSW_PQ"]
Granularity = Literal["step", "window"]

#: Step kinds a memory accepts unless `MemoryConfig.kinds` says otherwise ("window" is reserved
#: for rows that render several consecutive steps as one transcript).
DEFAULT_KINDS: tuple[str, ...] = (
    "observation",
    "action",
    "thought",
    "message",
    "tool",
    "result",
    "system",
    "feedback",
    "decision",
)


def default_memory_uri() -> str:
    """`$HULLFT_MEMORY_URI` when set, else `./hullft_memory`."""
    return os.environ.get(MEMORY_URI_ENV) or DEFAULT_MEMORY_URI


class MemoryConfig(StrictConfig):
    """Where the trajectory memory lives and how it is maintained.

    `uri` is a local folder (embedded, no server), an object-store URI (`s3://bucket/prefix`,
    `s3+ddb://bucket/prefix?ddbTableName=T`, `gs://`, `az://`) or a LanceDB Cloud/Enterprise
    database (`db://name`, with `api_key`, `region`, `host_override`).
    """

    uri: str = Field(default_factory=default_memory_uri, min_length=1)
    namespace: str = Field("default", description="default namespace (agent/user/tenant) of reads and writes")
    table: str = Field("trajectories", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
    granularity: Granularity | None = Field(
        None,
        description="'step': one row per step; 'window': one row per step holding it and the w-1 steps "
        "before it as a transcript. None: the table's own setting, or 'step' for a new table",
    )
    window: int | None = Field(None, ge=1, le=256, description="w for granularity='window' (default 4)")
    kinds: tuple[str, ...] = Field(DEFAULT_KINDS, min_length=1, description="accepted step kinds")
    read_consistency_interval: float | None = Field(
        1.0,
        ge=0,
        description="seconds after which a read re-checks for commits made by other processes; "
        "0 checks on every read, None never (call refresh())",
    )
    embed_batch_size: int = Field(256, ge=1, description="texts per embedder call in add()")
    write_batch_size: int = Field(
        50_000,
        ge=1,
        description="rows per Arrow batch handed to Lance in add() (the whole call is one commit)",
    )
    optimize_every: int = Field(
        200, ge=0, description="run optimize() after this many commits of this process (0: never)"
    )
    cleanup_older_than_s: float = Field(
        7 * 24 * 3600.0,
        ge=0,
        description="optimize() deletes versions older than this; a pinned evaluation snapshot older "
        "than this is lost, so raise it for long evaluations",
    )
    index_threshold: int = Field(
        10_000, ge=1, description="build the vector index once the table holds this many rows"
    )
    index_type: IndexType = "IVF_FLAT"
    index_params: dict[str, Any] = Field(
        default_factory=dict,
        description="extra arguments of the lancedb index config (num_partitions, num_sub_vectors, m, "
        "ef_construction ...); num_partitions defaults to sqrt(rows)",
    )
    nprobes: int | None = Field(
        None, ge=1, description="IVF partitions probed per query (fixed); default: see probe_rows_per_k"
    )
    probe_rows_per_k: float = Field(
        75.0,
        gt=0,
        description="probe enough IVF partitions to scan about this many rows per requested candidate "
        "(k=200 at 100k rows and sqrt(rows) partitions: 48 of 316 partitions)",
    )
    min_nprobes: int = Field(20, ge=1, description="never probe fewer IVF partitions than this")
    refine_factor: int | None = Field(None, ge=1, description="re-rank refine_factor*k rows exactly (PQ/SQ)")
    ef: int | None = Field(None, ge=1, description="HNSW search breadth (default 2k, at least 300)")
    reindex_growth: float = Field(
        4.0, gt=1, description="optimize() retrains the vector index once the table grew by this factor"
    )
    commit_retries: int = Field(8, ge=0, description="retries of a write that hit a commit conflict")
    storage_options: dict[str, str] = Field(
        default_factory=dict, description="object-store options passed to lancedb.connect"
    )
    api_key: SecretStr | None = Field(None, description="LanceDB Cloud/Enterprise key (db:// URIs)")
    region: str = "us-east-1"
    host_override: str | None = None

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        from hullft_agent.memory.schema import check_namespace

        return check_namespace(value)

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for kind in value:
            if not isinstance(kind, str) or not kind.strip() or kind == "window":
                raise InvalidArgumentError(f"kinds must be non-empty strings other than 'window', got {kind!r}")
        return tuple(value)

    @field_validator("storage_options")
    @classmethod
    def _storage_options(cls, value: dict[str, Any]) -> dict[str, str]:
        return {str(k): str(v) for k, v in value.items()}

    @model_validator(mode="after")
    def _window_needs_window_granularity(self) -> MemoryConfig:
        if self.window is not None and self.granularity == "step" and self.window != 1:
            raise InvalidArgumentError(f"window={self.window} only applies to granularity='window'")
        return self
