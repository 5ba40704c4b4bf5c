"""Trajectory memory on LanceDB: log agent episodes as embedded sequences, serve candidate pools."""

from hullft_agent.errors import (
    DuplicateStepError,
    EmbedderMismatchError,
    EmbedderRequiredError,
    InvalidStepError,
    InvalidWhereError,
    JsonlFormatError,
    MemoryNotFoundError,
    MemoryPermissionError,
    MemoryPinnedError,
    NotAMemoryTableError,
)
from hullft_agent.memory.config import DEFAULT_KINDS, MEMORY_URI_ENV, MemoryConfig, default_memory_uri
from hullft_agent.memory.jsonl import import_jsonl, read_jsonl
from hullft_agent.memory.schema import ALL_NAMESPACES, WINDOW_KIND, Step, trajectory_model
from hullft_agent.memory.store import EpisodeSummary, TextEmbedder, TrajectoryMemory

__all__ = [
    "ALL_NAMESPACES",
    "DEFAULT_KINDS",
    "MEMORY_URI_ENV",
    "WINDOW_KIND",
    "DuplicateStepError",
    "EmbedderMismatchError",
    "EmbedderRequiredError",
    "EpisodeSummary",
    "InvalidStepError",
    "InvalidWhereError",
    "JsonlFormatError",
    "MemoryConfig",
    "MemoryNotFoundError",
    "MemoryPermissionError",
    "MemoryPinnedError",
    "NotAMemoryTableError",
    "Step",
    "TextEmbedder",
    "TrajectoryMemory",
    "default_memory_uri",
    "import_jsonl",
    "read_jsonl",
    "trajectory_model",
]
