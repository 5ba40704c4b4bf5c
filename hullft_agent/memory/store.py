"""`TrajectoryMemory`: an agent's episodes in a LanceDB table, served as candidate pools.

Local folders are embedded (no server); `s3://`, `gs://`, `az://` and `db://` URIs put the same
table on an object store or on LanceDB Cloud/Enterprise so many agent workers can share one memory.
Writes are append commits (optimistic, retried on conflict); a reader sees other processes' commits
within `read_consistency_interval`; `checkout(version)` pins a snapshot for evaluation.

The class is assembled from one mixin per concern: `writing` (log and number steps), `queries`
(candidate pools), `stats` (counts and episodes) and `maintenance` (forget, versions, indexes);
`connection` opens the table.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

from hullft_agent.memory.base import TextEmbedder
from hullft_agent.memory.config import MemoryConfig
from hullft_agent.memory.connection import open_table
from hullft_agent.memory.maintenance import MaintenanceMixin
from hullft_agent.memory.queries import QueryMixin
from hullft_agent.memory.stats import EpisodeSummary, StatsMixin
from hullft_agent.memory.steps import StepLedger
from hullft_agent.memory.writing import WriterMixin

__all__ = ["EpisodeSummary", "TextEmbedder", "TrajectoryMemory"]


class TrajectoryMemory(WriterMixin, QueryMixin, StatsMixin, MaintenanceMixin):
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
        create: bool = True,
        **overrides: Any,
    ) -> None:
        base = config or MemoryConfig()
        self.config = MemoryConfig.model_validate({**base.model_dump(), **overrides}) if overrides else base
        self._embedder = embedder
        self._pinned = None
        self._commits = 0
        self._valid_where: OrderedDict[str, None] = OrderedDict()
        self._has_index = None
        self._probe_cache = None
        self._index_kind = None
        self._db, self._table, layout = open_table(self.config, embedder, create=create)
        self._dim = layout.dim
        self._embedder_name = layout.embedder_name
        self._granularity = layout.granularity
        self._window = layout.window
        self._steps = StepLedger(layout.granularity, layout.window)

    @classmethod
    def open(
        cls,
        uri: str | Path | None = None,
        *,
        embedder: TextEmbedder | None = None,
        namespace: str | None = None,
        config: MemoryConfig | None = None,
        create: bool = True,
        **overrides: Any,
    ) -> TrajectoryMemory:
        """Open the memory at `uri`, creating its table when it does not exist (that needs an
        embedder). Without an embedder, or with `create=False`, a missing memory raises
        `MemoryNotFoundError` and nothing is created."""
        if uri is not None:
            overrides["uri"] = str(uri)
        if namespace is not None:
            overrides["namespace"] = namespace
        return cls(config, embedder=embedder, create=create, **overrides)

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
