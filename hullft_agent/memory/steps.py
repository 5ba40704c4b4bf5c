"""Step numbers and window transcripts: the per-episode state a writer needs.

A step logged without a number gets the one after its episode's last step. With granularity
'window', each row holds its step and the w-1 steps before it as one transcript, so a write needs
the last steps of its episode; both are cached per episode and read from the table when unknown.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import numpy as np

from hullft_agent.memory.base import remember_lru, select
from hullft_agent.memory.filters import scope
from hullft_agent.memory.schema import WINDOW_KIND, WINDOW_META, CheckedStep, render_window

Key = tuple[str, str]  # (namespace, episode_id)
History = list[tuple[int, str, str]]  # (step, kind, text), in step order


def base_row(row: CheckedStep, text: str, kind: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """The scalar columns of one table row."""
    return {
        "id": row.id,
        "namespace": row.namespace,
        "task": row.task,
        "episode_id": row.episode_id,
        "step": row.step,
        "kind": kind,
        "text": text,
        "n_bytes": len(text.encode("utf-8")),
        "created_at": row.created_at,
        "reward": row.reward,
        "outcome": row.outcome,
        "metadata": json.dumps(metadata, ensure_ascii=False, allow_nan=False),
    }


class StepLedger:
    """Next step number and recent steps per episode, for one memory handle."""

    def __init__(self, granularity: str, window: int) -> None:
        self.granularity = granularity
        self.window = window
        self._next_step: OrderedDict[Key, int] = OrderedDict()
        self._history: OrderedDict[Key, History] = OrderedDict()

    def number(self, table: Any, checked: list[CheckedStep]) -> None:
        """Give every step without a number the next free one of its episode."""
        missing = {(r.namespace, r.episode_id) for r in checked if r.step is None}
        if not missing:
            return
        unknown = [key for key in missing if key not in self._next_step]
        if unknown:
            by_ns: dict[str, list[str]] = {}
            for ns, ep in unknown:
                by_ns.setdefault(ns, []).append(ep)
            for ns, episodes in by_ns.items():
                found = select(table, scope(ns, episodes=episodes), ["episode_id", "step"])
                last: dict[str, int] = {}
                for ep, st in zip(found["episode_id"].to_pylist(), found["step"].to_pylist(), strict=True):
                    last[ep] = max(last.get(ep, -1), st)
                for ep in episodes:
                    remember_lru(self._next_step, (ns, ep), last.get(ep, -1) + 1)
        counters = {key: self._next_step[key] for key in missing}
        for row in checked:  # explicit steps in the batch move the counter too
            key = (row.namespace, row.episode_id)
            if key in counters and row.step is not None:
                counters[key] = max(counters[key], row.step + 1)
        for row in checked:
            if row.step is None:
                key = (row.namespace, row.episode_id)
                row.step = counters[key]
                counters[key] += 1

    def rows(self, table: Any, checked: list[CheckedStep]) -> tuple[list[dict[str, Any]], list[np.ndarray | None]]:
        """The table rows of numbered steps and their given vectors (None: embed the row's text)."""
        if self.granularity == "step":
            return [base_row(r, r.text, r.kind, r.metadata) for r in checked], [r.vector for r in checked]
        w = self.window
        order = sorted(
            range(len(checked)), key=lambda i: (checked[i].namespace, checked[i].episode_id, checked[i].step)
        )
        histories: dict[Key, History] = {}
        rows: list[dict[str, Any] | None] = [None] * len(checked)
        for i in order:
            r = checked[i]
            key = (r.namespace, r.episode_id)
            if key not in histories:
                histories[key] = self._load_history(table, key, r.step)
            history = histories[key]
            window = [h for h in history if r.step - w < h[0] < r.step] + [(r.step, r.kind, r.text)]
            history.append((r.step, r.kind, r.text))
            del history[: max(0, len(history) - w)]
            info = {
                "first_step": window[0][0],
                "last_step": r.step,
                "kinds": [h[1] for h in window],
                "last_kind": r.kind,
                "last_text": r.text,
            }
            rows[i] = base_row(r, render_window(window), WINDOW_KIND, {**r.metadata, WINDOW_META: info})
        return [r for r in rows if r is not None], [None] * len(checked)

    def _load_history(self, table: Any, key: Key, first: int) -> History:
        w = self.window
        cached = self._history.get(key)
        if cached is not None:
            return [h for h in cached if first - w < h[0] < first]
        if first == 0 or w == 1:
            return []
        found = select(
            table,
            scope(key[0], episode_id=key[1], kind=WINDOW_KIND, step_range=(max(0, first - w + 1), first)),
            ["step", "metadata"],
        )
        history = []
        for step, meta in zip(found["step"].to_pylist(), found["metadata"].to_pylist(), strict=True):
            info = json.loads(meta).get(WINDOW_META, {})
            if "last_kind" in info and "last_text" in info:
                history.append((int(step), info["last_kind"], info["last_text"]))
        return sorted(history)

    def remember(self, checked: list[CheckedStep]) -> None:
        """Record steps that were just committed."""
        for r in checked:
            key = (r.namespace, r.episode_id)
            if r.step + 1 > self._next_step.get(key, 0):
                remember_lru(self._next_step, key, r.step + 1)
            if self.granularity == "window":
                history = list(self._history.get(key, []))
                history = [h for h in history if h[0] != r.step] + [(r.step, r.kind, r.text)]
                history.sort()
                remember_lru(self._history, key, history[-max(1, self.window - 1) :])

    def forget(self, namespace: str, episode_id: str | None) -> None:
        """Drop what is known of an episode (None: of every episode of the namespace)."""
        for key in [k for k in self._next_step if k[0] == namespace]:
            if episode_id is None or key[1] == episode_id:
                self._next_step.pop(key, None)
                self._history.pop(key, None)
