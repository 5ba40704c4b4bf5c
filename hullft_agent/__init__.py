"""hullft-agent: test-time finetuning of an agent's local LLM on its own trajectory memory.

Public names are imported lazily so `import hullft_agent` (and the CLI's `info`) stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "TestTimeAdapter": "hullft_agent.adapter",
    "AdaptationReport": "hullft_agent.adapter",
    "AdapterConfig": "hullft_agent.config",
    "SelectionConfig": "hullft_agent.config",
    "FinetuneConfig": "hullft_agent.config",
    "LoRAConfig": "hullft_agent.config",
    "ModelConfig": "hullft_agent.config",
    "EmbedderConfig": "hullft_agent.config",
    "Embedder": "hullft_agent.embedding",
    "CandidatePool": "hullft_agent.candidates",
    "CandidateSource": "hullft_agent.candidates",
    "InMemoryCandidates": "hullft_agent.candidates",
    "LoadedModel": "hullft_agent.models",
    "load_model": "hullft_agent.models",
    "Selection": "hullft_agent.selection",
    "select": "hullft_agent.selection",
    "BPBResult": "hullft_agent.metrics",
    "score_texts": "hullft_agent.metrics",
    "bits_per_byte": "hullft_agent.metrics",
    "TrajectoryMemory": "hullft_agent.memory",
    "MemoryConfig": "hullft_agent.memory",
    "HullFTError": "hullft_agent.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hullft_agent' has no attribute {name!r}")
    return getattr(import_module(module), name)
