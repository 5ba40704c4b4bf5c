"""The core call path every integration and application uses: lock → adapt → act → restore → log."""

from hullft_agent.runtime.choice import DEFAULT_SCORING, ChoiceResult, Scoring, Strategy, match_answer
from hullft_agent.runtime.engine import (
    DEFAULT_MEMORY_KINDS,
    Call,
    CallResult,
    NamespacedSource,
    Runtime,
    skipped_report,
)
from hullft_agent.runtime.generation import GenerationStats, SamplingParams
from hullft_agent.runtime.locks import lock_for
from hullft_agent.runtime.tools import (
    InvalidToolCall,
    ToolCall,
    check_tool_choice,
    check_tools,
    parse_tool_calls,
)

__all__ = [
    "DEFAULT_MEMORY_KINDS",
    "DEFAULT_SCORING",
    "Call",
    "CallResult",
    "ChoiceResult",
    "GenerationStats",
    "InvalidToolCall",
    "NamespacedSource",
    "Runtime",
    "SamplingParams",
    "Scoring",
    "Strategy",
    "ToolCall",
    "check_tool_choice",
    "check_tools",
    "lock_for",
    "match_answer",
    "parse_tool_calls",
    "skipped_report",
]
