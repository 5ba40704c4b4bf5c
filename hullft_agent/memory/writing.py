"""Logging steps and episodes: validate every row, number the steps, embed, append (one commit per
call), update finished episodes."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from hullft_agent.errors import DuplicateStepError, InvalidArgumentError, InvalidStepError, InvalidTypeError
from hullft_agent.memory.base import MemoryCore, select
from hullft_agent.memory.connection import local_root
from hullft_agent.memory.filters import scope
from hullft_agent.memory.locking import write_lock
from hullft_agent.memory.schema import (
    CheckedStep,
    Step,
    check_name,
    check_outcome,
    check_reward,
    check_step,
    check_vector,
    rows_to_arrow,
)
from hullft_agent.memory.steps import StepLedger

logger = logging.getLogger(__name__)

StepLike = Step | Mapping[str, Any] | tuple[str, str]


def _describe(item: Any) -> str:
    if isinstance(item, Step):
        episode, step = item.episode_id, item.step
    elif isinstance(item, Mapping):
        episode, step = item.get("episode_id"), item.get("step")
    else:
        return ""
    bits = []
    if episode is not None:
        bits.append(f"episode {episode!r}")
    if step is not None:
        bits.append(f"step {step!r}")
    return f" ({', '.join(bits)})" if bits else ""


def _as_step(item: Any) -> Step | Mapping[str, Any]:
    if isinstance(item, (Step, Mapping)):
        return item
    if isinstance(item, tuple) and len(item) == 2:
        return Step(kind=item[0], text=item[1])
    raise InvalidTypeError(f"a step must be a Step, a mapping or a (kind, text) tuple, got {type(item).__name__}")


def check_steps(
    items: list[Any],
    *,
    dim: int,
    kinds: tuple[str, ...],
    namespace: str,
    episode_id: str | None = None,
    task: str | None = None,
    vectors: np.ndarray | None = None,
    granularity: str = "step",
) -> tuple[list[CheckedStep], list[bool]]:
    """Validate a batch without touching a table: the checked steps, and which ones name their id.

    Raises `InvalidStepError` naming the first bad row (`DuplicateStepError` for an id or a step
    number an earlier row of the batch has).
    """
    if vectors is not None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(items):
            raise InvalidStepError(f"vectors must have shape ({len(items)}, {dim}), got {vectors.shape}")
    now = datetime.now(timezone.utc)
    checked: list[CheckedStep] = []
    given_ids: list[bool] = []
    for i, raw in enumerate(items):
        try:
            item = _as_step(raw)
            given_ids.append((item.id if isinstance(item, Step) else item.get("id")) is not None)
            one = check_step(
                item,
                dim=dim,
                kinds=kinds,
                default_namespace=namespace,
                default_episode=episode_id,
                default_task=task,
                now=now,
            )
            if vectors is not None:
                if one.vector is not None:
                    raise InvalidArgumentError("a vector is given both in the step and in vectors=")
                one.vector = check_vector(vectors[i], dim, what=f"vectors[{i}]")
            if one.vector is not None and granularity == "window":
                raise InvalidArgumentError(
                    "precomputed vectors cannot be used with granularity 'window' "
                    "(each row embeds the transcript of its window)"
                )
        except (TypeError, ValueError) as exc:
            raise InvalidStepError(f"row {i}{_describe(raw)}: {exc}", index=i) from exc
        checked.append(one)
    _check_repeats(checked)
    return checked, given_ids


def _check_repeats(checked: list[CheckedStep]) -> None:
    seen: dict[str, int] = {}
    keys: dict[tuple[str, str, int], int] = {}
    for i, row in enumerate(checked):
        if row.id in seen:
            raise DuplicateStepError(f"row {i}: id {row.id!r} repeats row {seen[row.id]}", index=i)
        seen[row.id] = i
        if row.step is not None:
            key = (row.namespace, row.episode_id, row.step)
            if key in keys:
                raise DuplicateStepError(
                    f"row {i}: step {row.step} of episode {row.episode_id!r} repeats row {keys[key]}", index=i
                )
            keys[key] = i


class WriterMixin(MemoryCore):
    """`log_step`, `log_episode`, `add` and `finish_episode`."""

    _steps: StepLedger
    _commits: int

    def log_step(
        self,
        episode_id: str,
        kind: str,
        text: str,
        *,
        step: int | None = None,
        task: str | None = None,
        namespace: str | None = None,
        reward: float | None = None,
        outcome: str | None = None,
        metadata: dict[str, Any] | None = None,
        vector: np.ndarray | None = None,
        id: str | None = None,
    ) -> str:
        """Log one step (one commit); return the id of its row. `step` None: the next step number."""
        item = Step(
            kind=kind,
            text=text,
            episode_id=episode_id,
            step=step,
            task=task,
            namespace=namespace,
            reward=reward,
            outcome=outcome,
            metadata=metadata,
            vector=vector,
            id=id,
        )
        return self.add([item])[0]

    def log_episode(
        self,
        episode_id: str,
        steps: Iterable[StepLike],
        *,
        task: str | None = None,
        namespace: str | None = None,
        reward: float | None = None,
        outcome: str | None = None,
        metadata: dict[str, Any] | None = None,
        progress: bool = False,
    ) -> list[str]:
        """Log a whole episode in one batch; episode-level task/reward/outcome/metadata fill each step."""
        episode_id = check_name(episode_id, "episode_id")
        reward = check_reward(reward)
        outcome = check_outcome(outcome)
        items: list[Step] = []
        for i, raw in enumerate(steps):
            try:
                item = _as_step(raw)
                item = item if isinstance(item, Step) else Step.from_mapping(item)
            except (TypeError, ValueError) as exc:
                raise InvalidStepError(f"row {i}: {exc}", index=i) from exc
            if item.episode_id is not None and item.episode_id != episode_id:
                raise InvalidStepError(
                    f"row {i}: episode_id {item.episode_id!r} differs from the episode {episode_id!r}",
                    index=i,
                )
            merged = {**(metadata or {}), **(item.metadata or {})} if (metadata or item.metadata) else None
            items.append(
                Step(
                    kind=item.kind,
                    text=item.text,
                    episode_id=episode_id,
                    step=item.step,
                    task=item.task if item.task is not None else task,
                    namespace=item.namespace if item.namespace is not None else namespace,
                    reward=item.reward if item.reward is not None else reward,
                    outcome=item.outcome if item.outcome is not None else outcome,
                    metadata=merged,
                    id=item.id,
                    vector=item.vector,
                    created_at=item.created_at,
                )
            )
        return self.add(items, progress=progress)

    def add(
        self,
        steps: Iterable[StepLike],
        *,
        namespace: str | None = None,
        episode_id: str | None = None,
        task: str | None = None,
        vectors: np.ndarray | None = None,
        progress: bool = False,
    ) -> list[str]:
        """Validate, embed and append steps as one commit; return the ids of the rows written.

        Every step is validated before anything is embedded or written: one bad step rejects the
        whole call with an `InvalidStepError` naming its row (`DuplicateStepError` for an id, or an
        explicit step number of its episode, the memory already holds). `vectors` (n, d) gives
        precomputed embeddings of the step texts (granularity 'step' only). Steps without a number
        take the next free ones of their episode, read from the table at commit time under the
        memory's write lock, so concurrent writers never share one. However many rows, the call is
        a single Lance commit (`write_batch_size` rows per Arrow batch): readers, and a crash, see
        all of it or none of it.
        """
        table = self._check_writable()
        items = list(steps)
        if not items:
            return []
        checked, given_ids = check_steps(
            items,
            dim=self._dim,
            kinds=self.config.kinds,
            namespace=self._ns(namespace),
            episode_id=episode_id,
            task=task,
            vectors=vectors,
            granularity=self._granularity,
        )
        with tqdm(total=len(checked), desc="logging", unit="row", disable=not progress, leave=False) as bar:
            matrix = None
            if self._granularity == "step":  # the vectors do not depend on step numbers: embed unlocked
                matrix = self._vectors([r.text for r in checked], [r.vector for r in checked], bar)
            with write_lock(local_root(self.config.uri), self.config.table):
                ids = self._commit("append to", lambda: self._append(table, checked, given_ids, matrix, bar))
        self._after_write()
        return ids

    def _append(
        self,
        table: Any,
        checked: list[CheckedStep],
        given_ids: list[bool],
        matrix: np.ndarray | None,
        bar: Any,
    ) -> list[str]:
        """Number the steps against the latest table version and commit every row at once."""
        table.checkout_latest()  # every commit so far, this process's and the others'
        self._steps.sync(table.version)
        self._check_new_ids(table, checked, given_ids)
        numbers = self._steps.number(table, checked)
        rows, appended = self._steps.rows(table, checked, numbers)
        if matrix is None:  # window rows embed transcripts of the steps before them
            matrix = self._vectors([r["text"] for r in rows], [None] * len(rows), bar)
        chunk, schema = self.config.write_batch_size, table.schema
        data = pa.concat_tables(
            [
                rows_to_arrow(rows[i : i + chunk], matrix[i : i + chunk], schema)
                for i in range(0, len(rows), chunk)
            ]
        )
        before = table.version
        table.add(data)
        self._steps.remember(
            checked, numbers, appended, table.version if table.version == before + 1 else None
        )
        return [r["id"] for r in rows]

    def _vectors(self, texts: list[str], given: list[np.ndarray | None], bar: Any) -> np.ndarray:
        """(n, d) unit vectors: the given ones, the others embedded in `embed_batch_size` batches."""
        matrix = np.empty((len(texts), self._dim), dtype=np.float32)
        todo = [i for i, v in enumerate(given) if v is None]
        for i, v in enumerate(given):
            if v is not None:
                matrix[i] = v
        bar.update(len(texts) - len(todo))
        size = self.config.embed_batch_size
        for start in range(0, len(todo), size):
            part = todo[start : start + size]
            matrix[part] = self._embed([texts[i] for i in part])
            bar.update(len(part))
        return matrix

    @staticmethod
    def _check_new_ids(table: Any, checked: list[CheckedStep], given: list[bool]) -> None:
        explicit = [row.id for row, g in zip(checked, given, strict=True) if g]
        if not explicit:
            return
        existing = select(table, scope(None, ids=explicit), ["id"], limit=len(explicit))
        if existing.num_rows:
            taken = set(existing["id"].to_pylist())
            i = next(j for j, row in enumerate(checked) if row.id in taken)
            raise DuplicateStepError(f"row {i}: id {checked[i].id!r} already exists in the memory", index=i)

    def _after_write(self) -> None:
        self._commits += 1
        every = self.config.optimize_every
        if every and self._commits % every == 0:
            try:
                self.optimize()
            except Exception as exc:  # maintenance must never fail a write that is already committed
                logger.warning("automatic optimize() failed (the write itself is committed): %s", exc)
            return
        self._maybe_index()

    def finish_episode(
        self,
        episode_id: str,
        *,
        reward: float | None = None,
        outcome: str | None = None,
        namespace: str | None = None,
    ) -> int:
        """Set the reward and/or outcome of every row of an episode; return the rows updated."""
        table = self._check_writable()
        values: dict[str, Any] = {}
        if reward is not None:
            values["reward"] = check_reward(reward)
        if outcome is not None:
            values["outcome"] = check_outcome(outcome)
        if not values:
            raise InvalidArgumentError("finish_episode needs a reward and/or an outcome")
        where = scope(self._ns(namespace), episode_id=check_name(episode_id, "episode_id"))
        result = self._commit("update", lambda: table.update(where=where, values=values))
        self._after_write()
        return int(getattr(result, "rows_updated", 0))
