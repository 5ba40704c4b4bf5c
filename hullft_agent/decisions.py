"""Decision rows: what an agent saw when it decided, and what it answered.

An agent decides P(answer | the prompt it sends). To change that decision, adaptation trains on
rows shaped like it: the prompt (chat messages) and the answer, with the loss on the answer only
(`hullft_agent.finetune.Completion`). A decision row is a memory step of kind `decision` whose text
is the *state* (latest observation and recent history, without the fixed system prompt), so
selection compares situations, and whose metadata holds the prompt, the answer and who acted. The
step's reward and the episode's outcome (set when it ends) say whether the decision was good.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hullft_agent.config import ACTOR_PATTERN, DecisionFormat
from hullft_agent.errors import InvalidArgumentError, InvalidStepError

if TYPE_CHECKING:
    from hullft_agent.finetune import Completion

DECISION_KIND = "decision"
#: Who acted: the usual actors (any short lowercase name matching ACTOR_PATTERN is accepted).
ACTORS = ("expert", "agent", "explorer", "user")


def check_actor(actor: Any) -> str:
    if not isinstance(actor, str) or not ACTOR_PATTERN.match(actor):
        raise InvalidStepError(f"actor must be a short lowercase name such as {', '.join(ACTORS)}; got {actor!r:.40}")
    return actor


def _check_prompt(prompt: Any) -> list[dict[str, str]] | str:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InvalidStepError("a decision's prompt is empty")
        return prompt
    from hullft_agent.runtime.prompt import check_conversation  # the runtime imports this module

    try:
        return check_conversation(prompt, what="prompt")
    except InvalidArgumentError as exc:
        raise InvalidStepError(f"decision: {exc}") from None


def decision_step(
    state: str,
    prompt: Sequence[Mapping[str, str]] | str,
    answer: str,
    *,
    actor: str = "agent",
    reward: float | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A memory step (for `TrajectoryMemory.add`) recording one decision.

    `state` is what selection embeds; `prompt` the chat messages the model was sent (or their
    rendered text); `answer` what it answered. An empty answer, state or prompt is refused
    (`InvalidStepError`): a decision without an answer teaches nothing.
    """
    if not isinstance(state, str) or not state.strip():
        raise InvalidStepError(f"a decision's state must be non-empty text, got {state!r:.60}")
    if not isinstance(answer, str) or not answer.strip():
        raise InvalidStepError(f"a decision's answer must be non-empty text, got {answer!r:.60}")
    extra = dict(metadata or {})
    for key in ("prompt", "answer", "actor"):
        if key in extra:
            raise InvalidStepError(f"metadata key {key!r} is reserved for the decision itself")
    return {
        "kind": DECISION_KIND,
        "text": state,
        "reward": reward,
        "metadata": {**extra, "prompt": _check_prompt(prompt), "answer": answer, "actor": check_actor(actor)},
    }


def is_decision(candidate_metadata: Mapping[str, Any]) -> bool:
    """Whether a candidate (a pool's metadata entry) is a decision row with its prompt and answer."""
    inner = candidate_metadata.get("metadata")
    return (candidate_metadata.get("kind") == DECISION_KIND and isinstance(inner, Mapping)
            and "prompt" in inner and "answer" in inner)


def trim_prompt(messages: list[dict[str, str]], fmt: DecisionFormat) -> list[dict[str, str]]:
    """The training prompt: without the system prompt unless `fmt.system`, and at most `fmt.history`
    messages before the last one (older turns dropped)."""
    kept = [m for m in messages if fmt.system or m["role"] != "system"]
    system = [m for m in kept if m["role"] == "system"]
    rest = [m for m in kept if m["role"] != "system"]
    if fmt.history is not None:
        rest = rest[-(fmt.history + 1):]
    return system + rest


def decision_instance(candidate_metadata: Mapping[str, Any], tokenizer: Any, fmt: DecisionFormat) -> Completion:
    """The training instance of a decision row: its prompt rendered as the model answers it, and its answer."""
    from hullft_agent.finetune import Completion  # torch: loaded only when training
    from hullft_agent.runtime.prompt import render_prompt

    inner = candidate_metadata["metadata"]
    prompt = inner["prompt"]
    if isinstance(prompt, str):
        text = prompt
    else:
        text = render_prompt(tokenizer, trim_prompt([dict(m) for m in prompt], fmt))
    return Completion(prompt=text, answer=inner["answer"])
