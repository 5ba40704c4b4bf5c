"""A tiny deterministic embedder for tests and demos that must not load a neural model.

Hashed bag of words (and character trigrams): texts that share words get similar vectors, so
retrieval behaves sensibly, and the same text gives the same vector in every process.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from hullft_agent.errors import InvalidArgumentError

_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """Same interface as `hullft_agent.embedding.Embedder` (`encode`, `dim`, `model_name`)."""

    def __init__(self, dim: int = 64, *, model_name: str | None = None) -> None:
        if dim < 2:
            raise InvalidArgumentError(f"dim must be >= 2, got {dim}")
        self.dim = int(dim)
        self.model_name = model_name or f"hashing-{dim}"

    def _features(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        grams = [w[i : i + 3] for w in words for i in range(max(1, len(w) - 2))]
        return words + ["#" + g for g in grams]

    def _vector(self, text: str) -> np.ndarray:
        out = np.zeros(self.dim, dtype=np.float64)
        for feature in self._features(text) or [text]:
            digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
            value = int.from_bytes(digest, "little")
            out[value % self.dim] += 1.0 if (value >> 32) & 1 else -1.0
        norm = np.linalg.norm(out)
        if norm == 0:
            out[0] = 1.0
            norm = 1.0
        return (out / norm).astype(np.float32)

    def encode(self, texts: str | list[str]) -> np.ndarray:
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        for i, text in enumerate(batch):
            if not isinstance(text, str) or not text.strip():
                raise InvalidArgumentError(f"texts[{i}] must be a non-empty string")
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = np.stack([self._vector(t) for t in batch])
        return vectors[0] if single else vectors
