"""Choosing one of a fixed set of answers: the result model, scoring rules and answer matching.

`Runtime.choose` (and `ChatHullFT.choose` over it) scores every choice by the model's log-likelihood of its tokens (followed by
the end-of-turn token) given the rendered prompt. `sum` ranks by the total log-probability, `mean`
by the log-probability per token (length-normalised); `DEFAULT_SCORING` is the one measured best on
TextWorld games (see benchmarks/RESULTS.md). With free generation the model writes an answer that
is matched to the closest choice; an answer that matches none falls back to the best-scored choice.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hullft_agent.adapter import AdaptationReport
from hullft_agent.errors import InvalidArgumentError, InvalidTypeError

Scoring = Literal["sum", "mean"]
Strategy = Literal["loglik", "generate"]
#: Ranking rule used when none is given (measured on held-out TextWorld games: benchmarks/RESULTS.md).
DEFAULT_SCORING: Scoring = "sum"
#: A generated answer matches a choice whose normalised text is this similar (difflib ratio) at least.
MATCH_CUTOFF = 0.75

_LN2 = math.log(2.0)
_NON_WORD = re.compile(r"[^\w\s-]+", re.UNICODE)


def check_choices(choices: Any) -> list[str]:
    """A non-empty list of distinct non-empty strings, or a ValueError/TypeError naming the bad one."""
    if isinstance(choices, str) or not isinstance(choices, Sequence):
        raise InvalidTypeError(f"choices must be a list of strings, got {type(choices).__name__}")
    items = list(choices)
    if not items:
        raise InvalidArgumentError("choices is empty; give at least one answer to choose from")
    seen: dict[str, int] = {}
    for i, choice in enumerate(items):
        if not isinstance(choice, str) or not choice.strip():
            raise InvalidArgumentError(f"choices[{i}] must be a non-empty string, got {choice!r:.60}")
        if choice in seen:
            raise InvalidArgumentError(f"choices[{i}] {choice!r} repeats choices[{seen[choice]}]")
        seen[choice] = i
    return items


def rank_scores(token_logprobs: Sequence[Sequence[float]], scoring: Scoring) -> list[float]:
    """One ranking score per choice: the sum of its token log-probabilities, or their mean."""
    if scoring == "sum":
        return [float(sum(lp)) for lp in token_logprobs]
    if scoring == "mean":
        return [float(sum(lp) / len(lp)) for lp in token_logprobs]
    raise InvalidArgumentError(f"scoring must be 'sum' or 'mean', got {scoring!r}")


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed, a leading '>' prompt removed."""
    text = text.strip().lstrip(">").strip()
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def match_answer(answer: str, choices: Sequence[str], cutoff: float = MATCH_CUTOFF) -> int | None:
    """Index of the choice a free-form answer names, or None.

    Tried in order on the answer's first line, normalised: an exact match; the longest choice the
    answer starts with ("open fridge, then ..."); the most similar choice with a difflib ratio of
    at least `cutoff`.
    """
    lines = [line for line in answer.strip().splitlines() if line.strip()]
    said = normalise(lines[0]) if lines else ""
    if not said:
        return None
    normalised = [normalise(c) for c in choices]
    for i, choice in enumerate(normalised):
        if choice == said:
            return i
    prefixes = [i for i, choice in enumerate(normalised) if choice and said.startswith(choice + " ")]
    if prefixes:
        return max(prefixes, key=lambda i: len(normalised[i]))
    ratios = [difflib.SequenceMatcher(None, said, choice).ratio() for choice in normalised]
    best = max(range(len(choices)), key=ratios.__getitem__)
    return best if ratios[best] >= cutoff else None


class ChoiceResult(BaseModel):
    """What `Runtime.choose` chose and why.

    `token_logprobs[i]` are the log-probabilities (nats) of choice i's tokens given the prompt,
    followed by the end-of-turn token's when `end_token` is true. `scores` rank the choices (the
    `scoring` rule); `index` is the chosen one (the best, or drawn at `temperature`). With `strategy='generate'`, `generated` is the
    model's own answer and `matched` says whether it named a choice (if not, `no_match` says so and
    the best-scored choice was taken). `message` is what an integration returns for a normal call (LangChain: the AIMessage, its
    content is the chosen text; `response_metadata` holds the adaptation report and timings).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    text: str
    index: int
    choices: list[str]
    scores: list[float]
    token_logprobs: list[list[float]]
    end_token: bool
    scoring: Scoring
    strategy: Strategy
    temperature: float = Field(0.0, description="0: the best-scored choice was taken; > 0: drawn ∝ exp(score / T)")
    generated: str | None = None
    matched: bool | None = None
    no_match: str | None = Field(None, description="why the generated answer was not used, when it named no choice")
    report: AdaptationReport
    call: Any = Field(None, exclude=True, repr=False, description="the runtime's CallResult of this call")
    message: Any = Field(None, exclude=True, repr=False)

    @property
    def logprob(self) -> float:
        """Log-probability (nats) of the chosen answer, end-of-turn token included."""
        return float(sum(self.token_logprobs[self.index]))

    def bpb(self, index: int | None = None) -> float:
        """Bits per byte of a choice's text (default: the chosen one); the end-of-turn token is not counted."""
        i = self.index if index is None else index
        lps = self.token_logprobs[i][:-1] if self.end_token else self.token_logprobs[i]
        return -float(sum(lps)) / (_LN2 * len(self.choices[i].encode("utf-8")))

    def summary(self) -> dict[str, Any]:
        """The choice without the report and message: what goes into response metadata and logs."""
        return self.model_dump(mode="json", exclude={"report", "token_logprobs", "call", "message"})
