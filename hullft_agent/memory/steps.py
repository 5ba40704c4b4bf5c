"""Step numbers and window transcripts: the per-episode state a writer needs.

A step logged without a number gets the one after its episode's last step; an explicit number
the episode already holds is refused. With granularity 'window', each row holds its step and the
w-1 steps before it as one transcript, so a write needs the episode's last steps too.

Both are read from the table at commit time (the writer holds the memory's write lock) and cached
per episode. The caches describe one table version: when the table moved on since this ledger's
own last commit (another process wrote, or this one deleted or compacted), they are dropped.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from hullft_agent.decisions import DECISION_KIND
from hullft_agent.errors import DuplicateStepError
from hullft_agent.memory.base import remember_lru, select
from hullft_agent.memory.filters import scope
from hullft_agent.memory.schema import WINDOW_KIND, WINDOW_META, CheckedStep, render_window

Key = tuple[str, str]  # (namespace, episode_id)
History = list[tuple[int, str, str]]  # (step, kind, text), in step order


def base_row(row: CheckedStep, step: int, text: str, kind: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """The scalar columns of one table row."""
    return {
        "id": row.id,
        "namespace": row.namespace,
        "task": row.task,
        "episode_id": row.episode_id,
        "step": step,
        "kind": kind,
        "text": text,
        "n_bytes": len(text.encode("utf-8")),
        "created_at": row.created_at,
        "reward": row.reward,
        "outcome": row.outcome,
        "metadata": json.dumps(metadata, ensure_ascii=False, allow_nan=False),
    }


class StepLedger:
    """Per episode: the next free step number and (windows) the steps just before it."""

    def __init__(self, granularity: str, window: int) -> None:
        self.granularity = granularity
        self.window = window
        self._version: int | None = None
        self._next_step: OrderedDict[Key, int] = OrderedDict()
        # the episode's steps numbered in (next - window, next), for granularity 'window'
        self._tail: OrderedDict[Key, History] = OrderedDict()

    def sync(self, version: int) -> None:
        """Forget everything unless `version` is the one this ledger's last commit made."""
        if version != self._version:
            self._drop()

    def _drop(self) -> None:
        self._next_step.clear()
        self._tail.clear()
        self._version = None

    def _appends(self, key: Key, step: int) -> bool:
        """Whether `step` lies past the episode's last known step (its tail is then known)."""
        known = self._next_step.get(key)
        return known is not None and step >= known

    def number(self, table: Any, checked: list[CheckedStep]) -> list[int]:
        """The step number of each row: its own (refused with `DuplicateStepError` when its
        episode holds it already), or the next free one of its episode."""
        keys = {(r.namespace, r.episode_id) for r in checked}
        explicit: dict[Key, list[tuple[int, int]]] = {}
        for i, r in enumerate(checked):
            if r.step is not None:
                explicit.setdefault((r.namespace, r.episode_id), []).append((i, r.step))
        # an explicit number below the next free one may be taken: read the episode's numbers
        unknown = [
            key
            for key in keys
            if key not in self._next_step or any(s < self._next_step[key] for _, s in explicit.get(key, ()))
        ]
        counters = {key: self._next_step[key] for key in keys if key not in unknown}
        taken = self._taken(table, unknown)
        counters.update((key, max(steps, default=-1) + 1) for key, steps in taken.items())
        for key, rows in explicit.items():
            for i, step in rows:
                if step in taken.get(key, ()):
                    raise DuplicateStepError(
                        f"row {i}: step {step} of episode {key[1]!r} (namespace {key[0]!r}) is already "
                        "in the memory; leave `step` out to take the next free number",
                        index=i,
                    )
        for key, rows in explicit.items():  # explicit steps in the batch move the counter too
            counters[key] = max(counters[key], max(s for _, s in rows) + 1)
        numbers = []
        for r in checked:
            key = (r.namespace, r.episode_id)
            if r.step is None:
                numbers.append(counters[key])
                counters[key] += 1
            else:
                numbers.append(r.step)
        return numbers

    def _taken(self, table: Any, keys: list[Key]) -> dict[Key, set[int]]:
        """The step numbers each episode holds (and its next free number, cached)."""
        taken: dict[Key, set[int]] = {key: set() for key in keys}
        by_ns: dict[str, list[str]] = {}
        for ns, ep in keys:
            by_ns.setdefault(ns, []).append(ep)
        for ns, episodes in by_ns.items():
            found = select(table, scope(ns, episodes=episodes), ["episode_id", "step"])
            for ep, step in zip(found["episode_id"].to_pylist(), found["step"].to_pylist(), strict=True):
                taken[(ns, ep)].add(step)
        for key, steps in taken.items():
            remember_lru(self._next_step, key, max(steps, default=-1) + 1)
        return taken

    def rows(
        self, table: Any, checked: list[CheckedStep], numbers: list[int]
    ) -> tuple[list[dict[str, Any]], dict[Key, History]]:
        """The table rows of numbered steps, and for each episode the batch appends to, its steps
        from the last window before the batch on (for `remember`)."""
        if self.granularity == "step":
            rows = [base_row(r, n, r.text, r.kind, r.metadata) for r, n in zip(checked, numbers, strict=True)]
            return rows, {}
        w = self.window
        order = sorted(
            range(len(checked)), key=lambda i: (checked[i].namespace, checked[i].episode_id, numbers[i])
        )
        histories: dict[Key, History] = {}
        appended: dict[Key, History] = {}
        out: list[dict[str, Any] | None] = [None] * len(checked)
        for i in order:
            r, step = checked[i], numbers[i]
            if r.kind == DECISION_KIND:  # a decision is its own row (its state text), never part of a transcript
                out[i] = base_row(r, step, r.text, r.kind, r.metadata)
                continue
            key = (r.namespace, r.episode_id)
            if key not in histories:
                histories[key] = self._before(table, key, step)
                if self._appends(key, step):  # the batch extends the episode: its tail is known after
                    appended[key] = histories[key]
            history = histories[key]
            window = ([h for h in history if h[0] < step][-(w - 1):] if w > 1 else []) + [(step, r.kind, r.text)]
            history.append((step, r.kind, r.text))
            del history[: max(0, len(history) - w)]  # rows come in step order: keep the last w
            info = {
                "first_step": window[0][0],
                "last_step": step,
                "kinds": [h[1] for h in window],
                "last_kind": r.kind,
                "last_text": r.text,
            }
            out[i] = base_row(r, step, render_window(window), WINDOW_KIND, {**r.metadata, WINDOW_META: info})
        return [r for r in out if r is not None], appended

    def _before(self, table: Any, key: Key, first: int) -> History:
        """The episode's last window - 1 transcript steps before step `first` (decision rows take step
        numbers too, so they are looked for over twice the window)."""
        w = self.window
        cached = self._tail.get(key)
        if cached is not None and self._appends(key, first):
            return [h for h in cached if h[0] < first][-(w - 1):] if w > 1 else []
        if first == 0 or w == 1:
            return []
        found = select(
            table,
            scope(key[0], episode_id=key[1], kind=WINDOW_KIND, step_range=(max(0, first - 2 * w), first)),
            ["step", "metadata"],
        )
        history = []
        for step, meta in zip(found["step"].to_pylist(), found["metadata"].to_pylist(), strict=True):
            info = json.loads(meta).get(WINDOW_META, {})
            if "last_kind" in info and "last_text" in info:
                history.append((int(step), info["last_kind"], info["last_text"]))
        return sorted(history)[-(w - 1):]

    def remember(
        self,
        checked: list[CheckedStep],
        numbers: list[int],
        appended: dict[Key, History],
        version: int | None,
    ) -> None:
        """Record a batch that was just committed as table `version` (None: others committed
        meanwhile, so nothing cached can be trusted)."""
        if version is None:
            self._drop()
            return
        for r, step in zip(checked, numbers, strict=True):
            key = (r.namespace, r.episode_id)
            if key in self._next_step and step + 1 > self._next_step[key]:
                remember_lru(self._next_step, key, step + 1)
        for key in {(r.namespace, r.episode_id) for r in checked}:
            history = appended.get(key)
            if history is None or key not in self._next_step:
                self._tail.pop(key, None)  # steps filled in below the end: read it again when needed
            else:
                remember_lru(self._tail, key, history[-self.window:])
        self._version = version
