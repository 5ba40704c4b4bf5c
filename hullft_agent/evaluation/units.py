"""Evaluation units: the texts whose bits-per-byte a method is judged on, and the query each adapts to.

A unit from a logged episode is a window of consecutive steps rendered exactly as the memory renders
its window rows (`kind: text` lines, `hullft_agent.memory.schema.render_window`). Its query is the unit's
own text (default) or only the steps before it (`query="context"`: the model adapts to what it has
seen so far and is scored on what comes next). Units can also come from plain `(id, text, group)`
items, which is how the mini-Pile feeds the same runner.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from hullft_agent.errors import InvalidArgumentError, NoUnitsError
from hullft_agent.memory.filters import scope
from hullft_agent.memory.schema import WINDOW_KIND, WINDOW_META, render_window

logger = logging.getLogger(__name__)

QueryMode = Literal["unit", "context"]
NO_TASK = "(no task)"


@dataclass(frozen=True)
class EvalUnit:
    """One scored text. `episode` is excluded from the unit's candidates (None: nothing to exclude)."""

    id: str
    text: str
    query: str
    group: str
    episode: str | None = None
    task: str | None = None
    first_step: int | None = None
    last_step: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def units_fingerprint(units: Sequence[EvalUnit]) -> str:
    """A digest of everything about the units that changes a result (ids, texts, queries, exclusions)."""
    digest = hashlib.sha256()
    for u in units:
        record = [u.id, u.text, u.query, u.group, u.episode, u.task]
        digest.update(json.dumps(record, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def _check_unit_size(unit_size: Any) -> int:
    if isinstance(unit_size, bool) or not isinstance(unit_size, int) or unit_size < 1:
        raise InvalidArgumentError(f"unit_size must be an integer >= 1 (steps per unit), got {unit_size!r}")
    return unit_size


# ---------------------------------------------------------------------------------------- memory


def _read(memory: Any, where: str | None, columns: list[str]) -> list[dict[str, Any]]:
    """Rows of the memory's table (the pinned version when pinned) matching `where`."""
    query = memory.table.search()
    if where is not None:
        query = query.where(where)
    return query.select(columns).limit(None).to_arrow().to_pylist()


def _row_step(row: dict[str, Any]) -> tuple[int, str, str]:
    """(step, kind, text) of one row: the step itself, also for window rows (kept in their metadata)."""
    if row["kind"] == WINDOW_KIND:
        info = (json.loads(row["metadata"]) if row["metadata"] else {}).get(WINDOW_META, {})
        if "last_kind" in info and "last_text" in info:
            return int(row["step"]), str(info["last_kind"]), str(info["last_text"])
        raise InvalidArgumentError(f"window row of step {row['step']} has no {WINDOW_META} metadata; cannot recover the step")
    return int(row["step"]), str(row["kind"]), str(row["text"])


def episode_steps(memory: Any, episode_id: str, *, namespace: str | None = None) -> list[tuple[int, str, str]]:
    """The (step, kind, text) triples of one logged episode, in step order (step or window memories)."""
    ns = namespace or memory.namespace
    rows = _read(memory, scope(ns, episode_id=episode_id), ["step", "kind", "text", "metadata"])
    steps = sorted(_row_step(r) for r in rows)
    return steps


def _episode_meta(memory: Any, namespace: str, task: str | None) -> dict[str, dict[str, Any]]:
    """episode_id -> {"task", "splits" (set of metadata split values), "started"} for one namespace."""
    rows = _read(memory, scope(namespace, task=task), ["episode_id", "task", "metadata", "created_at", "step"])
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = out.setdefault(r["episode_id"], {"task": r["task"], "meta": [], "started": r["created_at"]})
        entry["meta"].append(json.loads(r["metadata"]) if r["metadata"] else {})
        if r["created_at"] < entry["started"]:
            entry["started"] = r["created_at"]
    return out


def select_episodes(
    memory: Any,
    *,
    namespace: str | None = None,
    split: str | None = None,
    task: str | None = None,
    episodes: Sequence[str] | None = None,
    split_key: str = "split",
) -> list[tuple[str, str | None]]:
    """(episode_id, task) of the held-out episodes, oldest first.

    `split` matches the episodes whose metadata `split_key` equals it (any of their steps); `task`
    keeps one task; `episodes` names them explicitly (each must exist). The filters combine (AND).
    """
    if split is None and task is None and not episodes:
        raise InvalidArgumentError("choose the held-out episodes: pass split=, task= or episodes= (e.g. split='test')")
    ns = namespace or memory.namespace
    known = _episode_meta(memory, ns, None)
    if not known:
        raise NoUnitsError(
            f"the memory {memory.uri}/{memory.table_name} holds no episodes in namespace {ns!r}; "
            "log or import episodes first (hullft-agent memory import FILE)"
        )
    chosen = dict(known)
    if episodes:
        missing = [e for e in episodes if e not in known]
        if missing:
            raise NoUnitsError(
                f"episode(s) {missing[:10]} not found in namespace {ns!r} ({len(known)} episodes there, e.g. "
                f"{sorted(known)[:5]})"
            )
        chosen = {e: known[e] for e in dict.fromkeys(episodes)}
    if task is not None:
        chosen = {e: m for e, m in chosen.items() if m["task"] == task}
        if not chosen:
            tasks = Counter(m["task"] or NO_TASK for m in known.values())
            raise NoUnitsError(f"no held-out episode has task {task!r}; tasks in {ns!r}: {dict(tasks)}")
    if split is not None:
        kept = {e: m for e, m in chosen.items() if any(meta.get(split_key) == split for meta in m["meta"])}
        if not kept:
            found = Counter(
                str(next((meta[split_key] for meta in m["meta"] if split_key in meta), "<none>"))
                for m in chosen.values()
            )
            raise NoUnitsError(
                f"no episode in namespace {ns!r} has metadata {split_key}={split!r} "
                f"(episodes per {split_key} value: {dict(found)}); log episodes with "
                f"metadata={{'{split_key}': '{split}'}} or choose them with task= or episodes="
            )
        chosen = kept
    order = sorted(chosen, key=lambda e: (chosen[e]["started"], e)) if not episodes else list(chosen)
    return [(e, chosen[e]["task"]) for e in order]


def _segment(
    steps: list[tuple[int, str, str]], unit_size: int
) -> list[tuple[int, list[tuple[int, str, str]]]]:
    """(start index, steps) of consecutive non-overlapping windows of `unit_size` steps (the last may be shorter)."""
    return [(i, steps[i : i + unit_size]) for i in range(0, len(steps), unit_size)]


def episode_units(
    memory: Any,
    *,
    namespace: str | None = None,
    split: str | None = None,
    task: str | None = None,
    episodes: Sequence[str] | None = None,
    split_key: str = "split",
    unit_size: int = 4,
    query: QueryMode = "unit",
    context_steps: int | None = None,
    max_units: int | None = None,
) -> list[EvalUnit]:
    """Units from the held-out episodes of a `TrajectoryMemory` (see `select_episodes` for the choice).

    Each episode is cut into consecutive windows of `unit_size` steps (the last may be shorter), each
    rendered as one transcript like the memory's window rows. `query="unit"`: the query is the unit's
    text; `query="context"`: the query is the `context_steps` (default `unit_size`) steps before the
    unit, so an episode's first unit, having no context, is left out. The unit's group is its task.
    """
    unit_size = _check_unit_size(unit_size)
    if query not in ("unit", "context"):
        raise InvalidArgumentError(f"query must be 'unit' or 'context', got {query!r}")
    if context_steps is not None:
        _check_unit_size(context_steps)
    context_steps = context_steps or unit_size
    ns = namespace or memory.namespace
    chosen = select_episodes(memory, namespace=ns, split=split, task=task, episodes=episodes, split_key=split_key)
    units: list[EvalUnit] = []
    dropped = 0
    for episode_id, episode_task in chosen:
        steps = episode_steps(memory, episode_id, namespace=ns)
        for start, window in _segment(steps, unit_size):
            text = render_window(window)
            if query == "context":
                before = steps[max(0, start - context_steps) : start]
                if not before:
                    dropped += 1
                    continue
                query_text = render_window(before)
            else:
                query_text = text
            first, last = window[0][0], window[-1][0]
            units.append(
                EvalUnit(
                    id=f"{episode_id}:{first}-{last}",
                    text=text,
                    query=query_text,
                    group=episode_task or NO_TASK,
                    episode=episode_id,
                    task=episode_task,
                    first_step=first,
                    last_step=last,
                    meta={"namespace": ns, "steps": len(window)},
                )
            )
    if dropped:
        logger.info("left out %d unit(s) that open an episode: query='context' needs preceding steps", dropped)
    if not units:
        raise NoUnitsError(
            f"the {len(chosen)} held-out episode(s) gave no unit"
            + (" (query='context' leaves out each episode's first unit; use a smaller unit_size)" if dropped else "")
        )
    if max_units is not None:
        units = units[:max_units]
    logger.info("%d unit(s) of up to %d steps from %d episode(s)", len(units), unit_size, len(chosen))
    return units


# ---------------------------------------------------------------------------------------- plain


def text_units(items: Iterable[Any]) -> list[EvalUnit]:
    """Units from plain items: `(id, text, group)` tuples, or mappings with `id`, `text` and optionally
    `group`, `query` (default: the text), `episode` (excluded from its candidates) and `task`."""
    units: list[EvalUnit] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if isinstance(item, EvalUnit):
            unit = item
        elif isinstance(item, Mapping):
            unknown = sorted(set(item) - {"id", "text", "group", "query", "episode", "task", "meta"})
            if unknown:
                raise InvalidArgumentError(f"item {i}: unknown field(s) {unknown}")
            if "id" not in item or "text" not in item:
                raise InvalidArgumentError(f"item {i}: needs 'id' and 'text'")
            text = item["text"]
            unit = EvalUnit(
                id=item["id"],
                text=text,
                query=item.get("query") or text,
                group=item.get("group") or "all",
                episode=item.get("episode"),
                task=item.get("task"),
                meta=dict(item.get("meta") or {}),
            )
        elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
            uid, text, *rest = item
            unit = EvalUnit(id=uid, text=text, query=text, group=rest[0] if rest else "all")
        else:
            raise InvalidArgumentError(f"item {i}: expected (id, text, group), a mapping or an EvalUnit, got {item!r:.80}")
        if not isinstance(unit.id, str) or not unit.id.strip():
            raise InvalidArgumentError(f"item {i}: id must be a non-empty string, got {unit.id!r}")
        for name in ("text", "query"):
            value = getattr(unit, name)
            if not isinstance(value, str) or not value.strip():
                raise InvalidArgumentError(f"item {i} ({unit.id!r}): {name} must be a non-empty string, got {value!r:.60}")
        if not isinstance(unit.group, str) or not unit.group:
            raise InvalidArgumentError(f"item {i} ({unit.id!r}): group must be a non-empty string")
        if unit.id in seen:
            raise InvalidArgumentError(f"item {i}: duplicate unit id {unit.id!r}")
        seen.add(unit.id)
        units.append(unit)
    if not units:
        raise NoUnitsError("no units: the list is empty")
    return units
