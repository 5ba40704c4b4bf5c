"""Builders shared by the LangChain tests (no tests here): a tiny model, a memory and a ChatHullFT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import build_tiny_model, build_tiny_tokenizer
from langchain_hullft import ChatHullFT

from hullft_agent.adapter import TestTimeAdapter
from hullft_agent.config import AdapterConfig, FinetuneConfig, LoRAConfig, SelectionConfig
from hullft_agent.memory import TrajectoryMemory
from hullft_agent.memory.testing import HashingEmbedder

TOKENIZER = build_tiny_tokenizer()

EPISODES = {
    "a": [
        ("a-1", [("observation", "the kitchen has a closed fridge"), ("action", "open the fridge"),
                 ("observation", "inside the fridge is a yellow potato")]),
        ("a-2", [("observation", "a knife lies on the counter"), ("action", "slice the yellow potato")]),
    ],
    "b": [
        ("b-1", [("observation", "go north to the pantry"), ("action", "take the salt"),
                 ("observation", "def add(a, b): return a + b")]),
    ],
}


def make_memory(path: Path, *, episodes: dict[str, Any] | None = None, namespace: str = "default") -> TrajectoryMemory:
    memory = TrajectoryMemory.open(path, embedder=HashingEmbedder(32), namespace=namespace)
    for task, items in (EPISODES if episodes is None else episodes).items():
        for episode_id, steps in items:
            memory.log_episode(episode_id, steps, task=task)
    return memory


def adapter_config(**overrides: Any) -> AdapterConfig:
    config = AdapterConfig(
        selection=SelectionConfig(n=4, k=20),
        finetune=FinetuneConfig(lr=0.05, max_length=32, lora=LoRAConfig(r=4, alpha=8)),
        same_task_only=True,
    )
    return config.model_copy(update=overrides)


def make_chat(memory: TrajectoryMemory | None, *, adapter: bool = True, config: AdapterConfig | None = None,
              cls: type[ChatHullFT] = ChatHullFT, max_positions: int = 256, **kwargs: Any) -> ChatHullFT:
    model = build_tiny_model(len(TOKENIZER), max_positions=max_positions)
    params = {"max_tokens": 16, "temperature": 0.8, "seed": 5, "model": "tiny-llama", **kwargs}
    if adapter:
        source = memory if memory is not None else make_memory_free_source()
        ad = TestTimeAdapter(model, TOKENIZER, embedder=HashingEmbedder(32), source=source,
                             config=config or adapter_config())
        return cls(adapter=ad, memory=memory, **params)
    return cls(llm=model, tokenizer=TOKENIZER, memory=memory, **params)


def make_memory_free_source() -> Any:
    import numpy as np

    from hullft_agent.candidates import InMemoryCandidates

    return InMemoryCandidates([], np.zeros((0, 32), np.float32))
