"""LangChain integration of hullft-agent: a chat model that adapts before every call, and agent middleware.

- `ChatHullFT`: a `BaseChatModel` over a local causal LM, an optional `TestTimeAdapter` and an
  optional `TrajectoryMemory`.
- `HullFTMiddleware`: `langchain.agents.create_agent` middleware that adapts the agent's ChatHullFT
  before each model call and logs model outputs, tool calls and tool results to memory.
- `LanceDBStore`: a LangGraph long-term store on LanceDB whose items the adapter can learn from.
"""

from hullft_agent.errors import ContextOverflowError, UnsupportedMessageError
from hullft_agent.runtime import DEFAULT_MEMORY_KINDS, DEFAULT_SCORING, ChoiceResult, match_answer
from langchain_hullft._runtime import get_adaptation_report
from langchain_hullft.chat_models import ADAPTATION_FIELDS, CallOptions, ChatHullFT

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
