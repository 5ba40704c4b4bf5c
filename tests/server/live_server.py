"""A live uvicorn server on 127.0.0.1 over a tiny random model, for tests that use real HTTP clients."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn
from conftest import build_tiny_model
from hullft_server import ServerConfig, create_app
from hullft_server.run import serve_in_thread

from hullft_agent.adapter import TestTimeAdapter
from hullft_agent.config import AdapterConfig, FinetuneConfig, LoRAConfig, SelectionConfig
from hullft_agent.memory import TrajectoryMemory
from hullft_agent.memory.testing import HashingEmbedder
from hullft_agent.runtime import Runtime

MODEL = "tiny-test-model"
KEYS = {"key-alice-0001": "alice", "key-bob-0002": "bob"}


@dataclass
class LiveServer:
    url: str
    runtime: Runtime
    memory: TrajectoryMemory
    app: Any

    @property
    def base_url(self) -> str:
        return self.url + "/v1"


def tiny_runtime(tokenizer: Any, memory: TrajectoryMemory, *, mode: str = "per_task", seed: int = 0) -> Runtime:
    model = build_tiny_model(len(tokenizer), seed=seed, max_positions=1024)
    config = AdapterConfig(selection=SelectionConfig(n=2, k=8), mode=mode,
                           finetune=FinetuneConfig(lr=5e-2, max_length=64, lora=LoRAConfig(r=4, alpha=8)))
    adapter = TestTimeAdapter(model, tokenizer, embedder=memory.embedder, source=memory, config=config)
    return Runtime(adapter=adapter, memory=memory, name=MODEL, context_overflow="error")


@pytest.fixture(name="serve")
def serve_fixture(tiny_tokenizer, tmp_path) -> Iterator[Callable[..., LiveServer]]:
    """`serve(**ServerConfig fields)` starts a server over a fresh memory; all are stopped after the test."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def make(mode: str = "per_task", **settings: Any) -> LiveServer:
        memory = TrajectoryMemory.open(tmp_path / f"mem{len(running)}", embedder=HashingEmbedder(32))
        for namespace in ("alice", "bob", "default"):
            memory.log_episode(f"seed-{namespace}", [("observation", f"{namespace} keeps the fridge closed"),
                                                     ("action", f"{namespace} opens the fridge")],
                               namespace=namespace)
        runtime = tiny_runtime(tiny_tokenizer, memory, mode=mode)
        app = create_app(runtime, ServerConfig(**{"default_max_tokens": 8, **settings}))
        server, thread, url = serve_in_thread(app)
        running.append((server, thread))
        return LiveServer(url, runtime, memory, app)

    yield make
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=30)
