"""The store's semantic index: which embedder, which fields of a value are embedded, and the texts of a put.

LangGraph's `IndexConfig` (`dims`, `embed`, `fields`) is accepted as is. `embed` may also be a hullft
embedder (anything with `encode`, `dim`, `model_name`, like `hullft_agent.Embedder` or the test
`HashingEmbedder`), so the store and a `TrajectoryMemory` can share one embedding space; without
`embed` the packaged all-MiniLM-L6-v2 is used (offline).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings
from langgraph.store.base import ensure_embeddings, get_text_at_path, tokenize_path

from hullft_agent.errors import InvalidArgumentError, InvalidTypeError


class TextEmbedderEmbeddings(Embeddings):
    """A hullft embedder (`encode` → unit rows) as LangChain `Embeddings`."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return np.asarray(self.embedder.encode(list(texts)), dtype=np.float32).reshape(len(texts), -1).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def is_text_embedder(obj: Any) -> bool:
    return callable(getattr(obj, "encode", None)) and hasattr(obj, "dim") and hasattr(obj, "model_name")


@dataclass(frozen=True)
class StoreIndex:
    """A resolved index: the embeddings, their dimension, the name stamped on the table, the fields."""

    embeddings: Embeddings
    dims: int
    name: str
    fields: tuple[str, ...]
    embedder: Any = None  # the hullft embedder when one was given (shared with a TrajectoryMemory)

    def texts(self, value: dict[str, Any], index: list[str] | None) -> list[str]:
        """The texts of a value to embed: each field path's texts in order (`index` overrides the
        configured fields for one put); blank texts are left out (they carry no meaning to rank by)."""
        paths = self.fields if index is None else index
        out: list[str] = []
        for path in paths:
            tokens = path if path == "$" else tokenize_path(path)
            out.extend(t for t in get_text_at_path(value, tokens) if t.strip())
        return out


def _name_of(embed: Any) -> str:
    if isinstance(embed, str):
        return embed
    model = getattr(embed, "model", None) or getattr(embed, "model_name", None)
    if isinstance(model, str) and model:
        return model
    kind = embed if hasattr(embed, "__qualname__") else type(embed)  # a function, else the object's class
    return f"{kind.__module__}.{kind.__qualname__}"


def resolve_index(index: Any) -> StoreIndex | None:
    """`False`: no index (a key-value store). None or an `IndexConfig` without `embed`: the packaged
    embedder. `dims`, when given, must agree with a hullft embedder's dimension."""
    if index is False:
        return None
    if index is None:
        index = {}
    if not isinstance(index, dict):
        raise InvalidTypeError(f"index must be an IndexConfig dict, None (the packaged embedder) or False, got "
                               f"{type(index).__name__}")
    unknown = sorted(set(index) - {"dims", "embed", "fields"})
    if unknown:
        raise InvalidArgumentError(f"unknown index settings {unknown}; expected dims, embed, fields")
    embed = index.get("embed")
    if embed is None:
        from hullft_agent.embedding import Embedder

        embed = Embedder()
    dims = index.get("dims")
    if is_text_embedder(embed):
        if dims is not None and int(dims) != int(embed.dim):
            raise InvalidArgumentError(f"index dims {dims} disagree with the embedder's dimension {embed.dim}")
        embeddings, dims, hullft = TextEmbedderEmbeddings(embed), int(embed.dim), embed
    else:
        if dims is None:
            raise InvalidArgumentError("index needs 'dims' with a LangChain Embeddings object or an embedding function")
        embeddings, hullft = ensure_embeddings(embed), None
    if isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or dims < 1:
        raise InvalidArgumentError(f"index dims must be an integer >= 1, got {dims!r}")
    fields = index.get("fields") or ["$"]
    if isinstance(fields, str) or not isinstance(fields, Sequence) or not all(isinstance(f, str) and f for f in fields):
        raise InvalidArgumentError(f"index fields must be a list of field paths, got {fields!r}")
    return StoreIndex(embeddings, int(dims), _name_of(hullft if hullft is not None else embed), tuple(fields), hullft)


def unit_rows(vectors: Any, n: int, dims: int, what: str) -> np.ndarray:
    """Embedder output as unit-norm float32 rows, or a clear error (wrong shape, NaN, a zero vector)."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.shape != (n, dims):
        raise InvalidArgumentError(f"the embedder returned shape {array.shape} for {what}; expected ({n}, {dims})")
    norms = np.linalg.norm(array, axis=1)
    bad = ~np.isfinite(array).all(axis=1) | (norms == 0)
    if bad.any():
        raise InvalidArgumentError(f"the embedder returned a NaN/inf or all-zero vector for {what} "
                                   f"(row {int(np.argmax(bad))})")
    return array / norms[:, None]
