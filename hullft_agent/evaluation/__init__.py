"""BPB evaluation of test-time finetuning methods on logged episodes (and on a mini-Pile of real text).

    units = episode_units(memory, split="test", unit_size=4)
    result = run_evaluation(units, load_model(), embedder=emb, source=memory, out_dir="eval-out",
                            config=EvalConfig(methods=["base", "knn", "hullft"], n=[5, 20]))
    print(result.markdown)

Outputs in `out_dir`: results.jsonl (one line per finished unit, method and N; a rerun with
`resume=True` skips those), run.json, summary.json, summary.md, bpb_vs_n.png, bpb_vs_time.png.
`run_evaluation_ray` (needs `pip install "hullft-agent[ray]"`) shards the units over Ray workers and
writes the same folder.
"""

from __future__ import annotations

from hullft_agent.errors import (
    LeakageError,
    NoUnitsError,
    RayUnavailableError,
    RayWorkerError,
    ResultLogError,
)
from hullft_agent.evaluation.distributed import MemorySource, run_evaluation_ray
from hullft_agent.evaluation.guard import GuardedSource
from hullft_agent.evaluation.methods import METHODS, EvalConfig, MethodSpec, check_methods
from hullft_agent.evaluation.plan import EvalResult
from hullft_agent.evaluation.report import (
    bootstrap_ci,
    byte_weighted_bpb,
    markdown_table,
    paired_delta_ci,
    summarize,
    summary_markdown,
)
from hullft_agent.evaluation.results import ResultLog, read_results
from hullft_agent.evaluation.runner import run_evaluation
from hullft_agent.evaluation.units import EvalUnit, episode_steps, episode_units, select_episodes, text_units
from hullft_agent.files import write_atomic

__all__ = [
    "METHODS",
    "EvalConfig",
    "EvalResult",
    "EvalUnit",
    "GuardedSource",
    "LeakageError",
    "MemorySource",
    "MethodSpec",
    "NoUnitsError",
    "RayUnavailableError",
    "RayWorkerError",
    "ResultLog",
    "ResultLogError",
    "bootstrap_ci",
    "byte_weighted_bpb",
    "check_methods",
    "episode_steps",
    "episode_units",
    "markdown_table",
    "paired_delta_ci",
    "read_results",
    "run_evaluation",
    "run_evaluation_ray",
    "select_episodes",
    "summarize",
    "summary_markdown",
    "text_units",
    "write_atomic",
]
