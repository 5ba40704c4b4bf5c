"""The runtime builder Ray Serve replicas call in tests: a tiny random model over the spec's memory.

Replicas are separate processes: they import this module by name, so tests/ and tests/server/ must be on
their PYTHONPATH (test_ray_serve.py sets it before starting Ray).
"""

from __future__ import annotations

import torch
from conftest import build_tiny_model, build_tiny_tokenizer
from hullft_server.ray_serve import RayServeSpec

from hullft_agent.adapter import TestTimeAdapter
from hullft_agent.memory import TrajectoryMemory
from hullft_agent.memory.testing import HashingEmbedder
from hullft_agent.runtime import Runtime

MODEL = "tiny-test-model"
DIM = 32


def tiny_runtime(spec: RayServeSpec) -> Runtime:
    """Every replica builds the same weights (seed 0), as replicas of one model would load them."""
    torch.set_num_threads(1)
    tokenizer = build_tiny_tokenizer()
    memory = TrajectoryMemory.open(spec.memory, embedder=HashingEmbedder(DIM), namespace=spec.namespace,
                                   **spec.memory_options)
    model = build_tiny_model(len(tokenizer), seed=0, max_positions=1024)
    adapter = TestTimeAdapter(model, tokenizer, embedder=memory.embedder, source=memory, config=spec.adapter)
    return Runtime(adapter=adapter, memory=memory, name=MODEL, context_overflow=spec.context_overflow,
                   log_source="hullft_server")
