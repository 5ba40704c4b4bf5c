"""LangChain integration of hullft-agent: a chat model that adapts before every call, and agent middleware.

- `ChatHullFT`: a `BaseChatModel` over a local causal LM, an optional `TestTimeAdapter` and an
  optional `TrajectoryMemory`.
- `HullFTMiddleware`: `langchain.agents.create_agent` middleware that adapts the agent's ChatHullFT
  before each model call and logs model outputs, tool calls and tool results to memory.
- `LanceDBStore`: a LangGraph long-term store on LanceDB whose items the adapter can learn from.
"""

import importlib

from hullft_agent.errors import ContextOverflowError, UnsupportedMessageError

# Loaded on first use, so `from langchain_hullft import LanceDBStore` does not import torch and the model stack.
_LAZY = {
    **dict.fromkeys(("DEFAULT_MEMORY_KINDS", "DEFAULT_SCORING", "ChoiceResult", "match_answer"), "hullft_agent.runtime"),
    "get_adaptation_report": "langchain_hullft._runtime",
    **dict.fromkeys(("ADAPTATION_FIELDS", "CallOptions", "ChatHullFT"), "langchain_hullft.chat_models"),
}

__all__ = [
    "ADAPTATION_FIELDS",
    "DEFAULT_MEMORY_KINDS",
    "DEFAULT_SCORING",
    "CallOptions",
    "ChatHullFT",
    "ChoiceResult",
    "ContextOverflowError",
    "HullFTMiddleware",
    "LanceDBStore",
    "StoreCandidates",
    "UnsupportedMessageError",
    "get_adaptation_report",
    "match_answer",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    # the middleware needs the `langchain` package (the `langchain` extra); the chat model only langchain-core
    if name in ("HullFTMiddleware", "HullFTState", "find_chat_hullft"):
        try:
            from langchain_hullft import middleware
        except ImportError as exc:
            raise ImportError(
                f"{name} needs the `langchain` package (create_agent middleware): "
                'pip install "hullft-agent[langchain]"'
            ) from exc
        return getattr(middleware, name)
    if name in ("LanceDBStore", "StoreCandidates", "STORE_KIND"):
        try:  # the store needs `langgraph` (the `langgraph` extra)
            from langchain_hullft import store
        except ImportError as exc:
            raise ImportError(f'{name} needs the `langgraph` package: pip install "hullft-agent[langgraph]"') from exc
        return getattr(store, name)
    raise AttributeError(f"module 'langchain_hullft' has no attribute {name!r}")
