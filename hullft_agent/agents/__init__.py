"""Applications on the core runtime: the TextWorld agent and the comparison of adaptation modes.

Nothing in the core imports this package (the CLI's `demo` loads it inside the command), so the
library keeps one dependency direction: core ← integrations ← applications.
"""

from hullft_agent.agents.compare import (
    MODES,
    CompareConfig,
    Comparison,
    continual_summary,
    load_comparison,
    run_comparison,
)
from hullft_agent.agents.report import summary_text, write_report
from hullft_agent.agents.textworld import (
    AgentConfig,
    AgentInterrupted,
    EpisodeResult,
    StepRecord,
    TextWorldAgent,
)

__all__ = [
    "MODES",
    "AgentConfig",
    "AgentInterrupted",
    "CompareConfig",
    "Comparison",
    "EpisodeResult",
    "StepRecord",
    "TextWorldAgent",
    "continual_summary",
    "load_comparison",
    "run_comparison",
    "summary_text",
    "write_report",
]
