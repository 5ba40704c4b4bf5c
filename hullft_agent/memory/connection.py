"""Connecting to a memory's database and opening (or creating) its table.

A local folder is an embedded LanceDB database; `s3://`, `gs://`, `az://` URIs put it on an object
store and `db://` on LanceDB Cloud/Enterprise. The table's embedder, dimension and layout are
stamped on its schema when it is created and checked on every open. Nothing is written unless a
table is created: a memory that does not exist (and may not be created) leaves no folder behind,
and a local folder under the table's name that Lance cannot open is never written into.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lancedb

from hullft_agent.errors import (
    EmbedderMismatchError,
    InvalidArgumentError,
    MemoryNotFoundError,
    NotAMemoryTableError,
)
from hullft_agent.memory.config import MemoryConfig
from hullft_agent.memory.lance_errors import is_table_existing, is_table_missing, permission_error
from hullft_agent.memory.schema import (
    META_DIM,
    META_EMBEDDER,
    META_GRANULARITY,
    META_WINDOW,
    arrow_schema,
    table_settings,
)

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = 4
#: How long to wait for a table another process is creating before calling its folder foreign.
_CREATE_WAIT_S = 0.5


@dataclass(frozen=True)
class TableLayout:
    """What a table's schema stamp says: its embedder, the vectors' dimension, how rows are cut."""

    embedder_name: str
    dim: int
    granularity: str
    window: int


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_root(uri: str) -> Path | None:
    """The folder of a local memory (None for object stores and LanceDB Cloud)."""
    return Path(uri.removeprefix("file://")).expanduser() if is_local(uri) else None


def connect(config: MemoryConfig) -> Any:
    """The lancedb connection of `config.uri` (API key from `config.api_key` or $LANCEDB_API_KEY)."""
    interval = (
        None
        if config.read_consistency_interval is None
        else timedelta(seconds=config.read_consistency_interval)
    )
    kwargs: dict[str, Any] = {"read_consistency_interval": interval}
    if config.storage_options:
        kwargs["storage_options"] = dict(config.storage_options)
    uri = config.uri
    if uri.startswith("db://"):
        api_key = config.api_key.get_secret_value() if config.api_key else os.environ.get("LANCEDB_API_KEY")
        if not api_key:
            raise InvalidArgumentError(f"{uri} is a LanceDB Cloud/Enterprise URI: set api_key or LANCEDB_API_KEY")
        kwargs.update(api_key=api_key, region=config.region)
        if config.host_override:
            kwargs["host_override"] = config.host_override
    root = local_root(uri)
    logger.debug("connecting to trajectory memory at %s", root or uri)
    try:
        return lancedb.connect(str(root) if root is not None else uri, **kwargs)
    except Exception as exc:
        refused = permission_error(exc, "open", config.uri)
        if refused is not None:
            raise refused from exc
        raise


def open_table(config: MemoryConfig, embedder: Any, *, create: bool) -> tuple[Any, Any, TableLayout]:
    """Connect and open the memory's table: (db, table, layout). A missing table is created
    (stamped with `embedder`) when `create` and an embedder allow it, else `MemoryNotFoundError`."""
    root = local_root(config.uri)
    folder = None if root is None else root / f"{config.table}.lance"
    may_create = create and embedder is not None
    if folder is not None and not may_create and not os.path.lexists(folder):
        raise _missing(config, embedder)  # checked before connecting, which would make the folder
    if folder is not None and os.path.lexists(folder) and not folder.is_dir():
        raise _foreign(folder)
    db = connect(config)
    table = _try_open(db, config.table)
    if table is None and folder is not None and os.path.lexists(folder):
        table = _wait_for_table(db, config, folder)
    if table is None:
        if not may_create:
            raise _missing(config, embedder)
        table = _create(db, config, embedder)
    return db, table, _check_layout(table, config, embedder)


def _missing(config: MemoryConfig, embedder: Any) -> MemoryNotFoundError:
    where = f"there is no memory table {config.table!r} at {config.uri}"
    if embedder is None:
        return MemoryNotFoundError(f"{where}; pass an embedder to create it")
    return MemoryNotFoundError(f"{where} (and this open does not create one)")


def _wait_for_table(db: Any, config: MemoryConfig, folder: Path) -> Any:
    """The table's folder exists but Lance cannot open it: another process may be creating the
    table (wait a moment for it). An empty folder holds nothing (None: create the table in it);
    anything else is not ours to write into."""
    deadline = time.monotonic() + _CREATE_WAIT_S
    while folder.is_dir():
        if not any(folder.iterdir()):
            return None
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
        table = _try_open(db, config.table)
        if table is not None:
            return table
    raise _foreign(folder)


def _foreign(folder: Path) -> NotAMemoryTableError:
    return NotAMemoryTableError(
        f"{folder} exists but is not a Lance table; the memory will not write into it "
        "(move it away, or use another uri or table name)"
    )


def _try_open(db: Any, name: str) -> Any:
    try:
        return db.open_table(name)
    except Exception as exc:
        if is_table_missing(exc):
            return None
        raise


def _create(db: Any, config: MemoryConfig, embedder: Any) -> Any:
    granularity = config.granularity or "step"
    window = config.window or (DEFAULT_WINDOW if granularity == "window" else 1)
    schema = arrow_schema(int(embedder.dim), str(embedder.model_name), granularity, window)
    try:
        table = db.create_table(config.table, schema=schema)
    except Exception as exc:
        refused = permission_error(exc, "create a table in", config.uri)
        if refused is not None:
            raise refused from exc
        if not is_table_existing(exc):
            raise
        return db.open_table(config.table)  # created meanwhile by another process
    logger.info("created trajectory memory %s/%s (dim %d)", config.uri, config.table, embedder.dim)
    return table


def _check_layout(table: Any, config: MemoryConfig, embedder: Any) -> TableLayout:
    where = f"{config.uri}/{config.table}"
    settings = table_settings(table.schema)
    if settings is None:
        raise NotAMemoryTableError(
            f"table {config.table!r} at {config.uri} is not a hullft trajectory memory (no embedder stamp)"
        )
    layout = TableLayout(
        embedder_name=settings[META_EMBEDDER],
        dim=int(settings[META_DIM]),
        granularity=settings.get(META_GRANULARITY, "step"),
        window=int(settings.get(META_WINDOW, "1")),
    )
    if embedder is not None:
        name, dim = str(embedder.model_name), int(embedder.dim)
        if name != layout.embedder_name or dim != layout.dim:
            raise EmbedderMismatchError(
                f"memory {where} was written with embedder {layout.embedder_name!r} (dim {layout.dim}); it "
                f"cannot be used with {name!r} (dim {dim}). Open it with the same embedder, or use another "
                "table/uri for the new one."
            )
    if config.granularity is not None and config.granularity != layout.granularity:
        raise InvalidArgumentError(
            f"memory {where} stores granularity {layout.granularity!r}, config asks for {config.granularity!r}"
        )
    if config.window is not None and layout.granularity == "window" and config.window != layout.window:
        raise InvalidArgumentError(f"memory {where} stores window {layout.window}, config asks for {config.window}")
    return layout
