"""Offline behaviour cloning: one adapter trained once on every decision row, the baseline of test-time selection.

Test-time adaptation pays for selecting and training before each decision. The question a user asks
first is whether that beats the plain alternative: train one LoRA once, offline, on all the decisions
in memory (prompt -> answer, loss on the answer) and then answer with it fixed. `behaviour_cloning`
is that baseline, shared by the offline decision benchmark and the agent comparison so both measure
the same thing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hullft_agent.config import DecisionFormat, FinetuneConfig
from hullft_agent.decisions import decision_instance, is_decision
from hullft_agent.errors import InvalidArgumentError
from hullft_agent.finetune.session import FinetuneSession, create_session
from hullft_agent.finetune.trainer import TrainResult, train_multiset


@dataclass
class BehaviourCloning:
    """What `behaviour_cloning` trained: the session (its `model` answers with the trained adapter) and its cost."""

    session: FinetuneSession
    rows: int
    epochs: int
    train: TrainResult
    seconds: float

    @property
    def model(self) -> Any:
        return self.session.model

    def merged(self) -> Any:
        """The trained model as a plain model (a LoRA folded into its weights), which a `TestTimeAdapter` can
        adapt further at test time. The session is spent afterwards: use the returned model only."""
        model = self.session.model
        return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model

    def to_dict(self) -> dict[str, Any]:
        """The numbers a report needs (no tensors)."""
        losses = self.train.losses
        return {
            "rows": self.rows, "epochs": self.epochs, "steps": self.train.steps, "passes": self.train.passes,
            "tokens": self.train.tokens, "loss_tokens": self.train.loss_tokens, "seconds": self.seconds,
            "train_s": self.train.wall_time, "ok": self.train.ok, "stopped_reason": self.train.stopped_reason,
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        }


def behaviour_cloning(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    config: FinetuneConfig | None = None,
    *,
    fmt: DecisionFormat | None = None,
    epochs: int = 2,
    seed: int = 0,
) -> BehaviourCloning:
    """Train one session (LoRA by default) once on every decision row in `rows`, `epochs` times each.

    Each row is a decision row as a candidate pool carries it (kind `decision`, its prompt and
    answer under `metadata`; `hullft_agent.decisions.decision_step` builds one). The instances are
    the rows' completions (prompt rendered with the model's chat template and trimmed by `fmt`,
    loss on the answer unless `config.mask_prompt` is off), seen `epochs` times in one random order
    drawn from `seed`, one Adam step each (no gradient reuse: every instance is distinct). `model`
    is wrapped and trained in place: pass a copy to keep the base model. A non-finite loss stops
    training and resets the session (`result.train.ok` False, the model then answers as the base).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise InvalidArgumentError(f"epochs must be an integer >= 1, got {epochs!r}")
    rows = list(rows)
    if not rows:
        raise InvalidArgumentError("behaviour cloning needs at least one decision row; got none")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or not is_decision(row):
            kind = row.get("kind") if isinstance(row, Mapping) else type(row).__name__
            raise InvalidArgumentError(
                f"rows[{i}] is not a decision row (kind {kind!r}; expected kind 'decision' with a prompt and an "
                "answer in its metadata, as hullft_agent.decisions.decision_step builds)"
            )
    config = config if config is not None else FinetuneConfig()
    fmt = fmt if fmt is not None else DecisionFormat()
    started = time.perf_counter()
    session = create_session(model, tokenizer, config)
    instances = [decision_instance(row, tokenizer, fmt) for row in rows]
    order = np.random.default_rng(seed).permutation(len(instances) * epochs) % len(instances)
    train = train_multiset(session, [instances[i] for i in order], [1] * len(order),
                           config.model_copy(update={"refresh_interval": 1}))
    return BehaviourCloning(session=session, rows=len(rows), epochs=epochs, train=train,
                            seconds=time.perf_counter() - started)
