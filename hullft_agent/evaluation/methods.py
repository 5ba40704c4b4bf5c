"""What an evaluation compares (`METHODS`) and how (`EvalConfig`, including the training protocol).

Methods: `base` (no adaptation), `knn`, `sift` (plain training, r = 1), `hullft` (Frank-Wolfe
+ geometric integerization + gradient reuse r = 2) and `hullft-noreuse` (the same multiset, r = 1).
The `reference` protocol is the published one: full finetuning, Adam lr 5e-5, sequences padded to 1024
tokens (or the model's context if shorter); it trains every weight of the model it is given, so give it
its own copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator

from hullft_agent.config import FinetuneConfig, StrictConfig
from hullft_agent.errors import InvalidArgumentError
from hullft_agent.evaluation.report import BASE

#: Published protocol: full finetuning, Adam lr 5e-5, sequences truncated and padded to 1024 tokens.
REFERENCE_LR = 5e-5
REFERENCE_LENGTH = 1024


@dataclass(frozen=True)
class MethodSpec:
    """How a method name maps onto the adapter: selection method (None: no adaptation) and r."""

    selection: str | None
    refresh_interval: int = 1
    description: str = ""


METHODS: dict[str, MethodSpec] = {
    BASE: MethodSpec(None, 1, "no adaptation"),
    "knn": MethodSpec("knn", 1, "the N nearest candidates, plain training"),
    "sift": MethodSpec("sift", 1, "SIFT (lambda 0.2), plain training"),
    "hullft": MethodSpec("hullft", 2, "Frank-Wolfe + integerization, gradient reuse r=2"),
    "hullft-noreuse": MethodSpec("hullft", 1, "Frank-Wolfe + integerization, r=1"),
}


def check_methods(methods: Sequence[str]) -> list[str]:
    """The method names, checked: a ValueError lists the valid ones."""
    if isinstance(methods, str):
        methods = [methods]
    out = list(dict.fromkeys(methods))
    if not out:
        raise InvalidArgumentError(f"no method given; valid methods: {', '.join(METHODS)}")
    unknown = [m for m in out if m not in METHODS]
    if unknown:
        raise InvalidArgumentError(f"unknown method(s) {unknown}; valid methods: {', '.join(METHODS)}")
    return out


class EvalConfig(StrictConfig):
    """What an evaluation compares and how. Fields that change results are part of the resume check."""

    methods: list[str] = Field(default_factory=lambda: list(METHODS))
    n: list[int] = Field(default_factory=lambda: [5, 20], description="multiset sizes N")
    k: int = Field(200, ge=1, description="candidate pool size")
    mode: Literal["per_query", "per_task"] = "per_query"
    protocol: Literal["lora", "reference"] = "lora"
    exclude_task: bool = Field(False, description="also keep the unit's own task out of its candidates")
    finetune: FinetuneConfig = Field(
        default_factory=FinetuneConfig, description="LoRA training settings (protocol 'lora')"
    )
    score_max_length: int | None = Field(None, ge=2, description="scoring window (default: model context)")
    score_batch_size: int = Field(8, ge=1)
    bootstrap: int = Field(1000, ge=1, description="bootstrap resamples of the units")
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = Field(0, description="bootstrap seed")

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        return check_methods(value)

    @field_validator("n")
    @classmethod
    def _ns(cls, value: list[int]) -> list[int]:
        if not value:
            raise InvalidArgumentError("n needs at least one multiset size")
        bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int) or v < 1]
        if bad:
            raise InvalidArgumentError(f"every N must be an integer >= 1, got {bad}")
        return sorted(set(value))

    def jobs_n(self, method: str) -> list[int]:
        return [0] if METHODS[method].selection is None else list(self.n)

    def training(self, context: int | None) -> FinetuneConfig:
        """The finetune settings of this protocol for a model that attends to `context` tokens (None: unknown)."""
        base = self.finetune
        if self.protocol == "reference":
            length = min(REFERENCE_LENGTH, context) if context else REFERENCE_LENGTH
            return base.model_copy(update={"method": "full", "lr": REFERENCE_LR, "max_length": length, "pad_to": length})
        length = min(base.max_length, context) if context else base.max_length
        return base.model_copy(update={"method": "lora", "max_length": length})
