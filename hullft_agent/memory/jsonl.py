"""Episodes as JSON lines: the import format of `hullft-agent memory import`.

Each non-blank line is one JSON object, either a whole episode::

    {"episode_id": "ep-1", "task": "cook", "namespace": "alice", "reward": 1.0, "outcome": "won",
     "metadata": {"seed": 3},
     "steps": [{"kind": "observation", "text": "You are in a kitchen."},
               {"kind": "action", "text": "open fridge", "metadata": {"tool": "parser"}}]}

or a single step::

    {"episode_id": "ep-1", "step": 2, "kind": "observation", "text": "The fridge is open.", "task": "cook"}

Episode fields (`task`, `namespace`, `reward`, `outcome`, `metadata`) fill the steps that lack
them; `namespace` defaults to the memory's (or the `--namespace` option). Step fields: `kind` and
`text` (required), `step` (>= 0; omitted: the next number of its episode), `task`, `namespace`,
`reward`, `outcome`, `metadata` (object), `id` (unique; default a random uuid) and `created_at`
(ISO 8601). Both forms can be mixed in one file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from hullft_agent.errors import InvalidStepError, JsonlFormatError
from hullft_agent.memory.schema import Step

_EPISODE_FIELDS = {"episode_id", "task", "namespace", "reward", "outcome", "metadata", "steps"}
_STEP_FIELDS = {
    "episode_id",
    "step",
    "kind",
    "text",
    "task",
    "namespace",
    "reward",
    "outcome",
    "metadata",
    "id",
    "created_at",
}


def _step(data: dict[str, Any], where: str, defaults: dict[str, Any]) -> Step:
    if not isinstance(data, dict):
        raise JsonlFormatError(f"{where}: a step must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _STEP_FIELDS)
    if unknown:
        raise JsonlFormatError(
            f"{where}: unknown step field(s) {unknown}; expected some of {sorted(_STEP_FIELDS)}"
        )
    for required in ("kind", "text"):
        if required not in data:
            raise JsonlFormatError(f"{where}: a step needs {required!r}")
    values = {**{k: v for k, v in defaults.items() if v is not None}, **data}
    created = values.get("created_at")
    if created is not None:
        if not isinstance(created, str):
            raise JsonlFormatError(f"{where}: created_at must be an ISO 8601 string")
        try:
            values["created_at"] = datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError as exc:
            raise JsonlFormatError(f"{where}: created_at {created!r} is not ISO 8601") from exc
    if defaults.get("metadata") and isinstance(data.get("metadata"), dict):
        values["metadata"] = {**defaults["metadata"], **data["metadata"]}
    return Step(**values)


def read_jsonl(path: str | Path) -> tuple[list[Step], list[int]]:
    """Parse an import file; return the steps and, for each, the 1-based line it came from."""
    path = Path(path)
    steps: list[Step] = []
    lines: list[int] = []
    with path.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise JsonlFormatError(f"{where}: not valid JSON ({exc.msg})", number) from exc
            except ValueError as exc:  # e.g. an integer beyond Python's digit limit
                raise JsonlFormatError(f"{where}: not valid JSON ({exc})", number) from exc
            if not isinstance(data, dict):
                raise JsonlFormatError(f"{where}: each line must be a JSON object", number)
            try:
                if "steps" in data:
                    unknown = sorted(set(data) - _EPISODE_FIELDS)
                    if unknown:
                        raise JsonlFormatError(
                            f"{where}: unknown episode field(s) {unknown}; expected some of {sorted(_EPISODE_FIELDS)}"
                        )
                    if "episode_id" not in data:
                        raise JsonlFormatError(f"{where}: an episode needs 'episode_id'")
                    if not isinstance(data["steps"], list) or not data["steps"]:
                        raise JsonlFormatError(f"{where}: 'steps' must be a non-empty list")
                    defaults = {k: data.get(k) for k in _EPISODE_FIELDS - {"steps"}}
                    for j, item in enumerate(data["steps"]):
                        if (
                            isinstance(item, dict)
                            and item.get("episode_id", data["episode_id"]) != data["episode_id"]
                        ):
                            raise JsonlFormatError(f"{where}: steps[{j}] names another episode_id")
                        steps.append(_step(item, f"{where}: steps[{j}]", defaults))
                        lines.append(number)
                else:
                    if "episode_id" not in data:
                        raise JsonlFormatError(
                            f"{where}: a step line needs 'episode_id' (or use an episode line)"
                        )
                    steps.append(_step(data, where, {}))
                    lines.append(number)
            except JsonlFormatError as exc:
                exc.line = number
                raise
            except TypeError as exc:
                raise JsonlFormatError(f"{where}: {exc}", number) from exc
    return steps, lines


@contextmanager
def rows_to_lines(path: str | Path, lines: list[int]) -> Iterator[None]:
    """Turn an `InvalidStepError` about row i of a file's steps into a `JsonlFormatError` naming
    the line the row came from."""
    try:
        yield
    except InvalidStepError as exc:
        if exc.index is None:
            raise
        line = lines[exc.index]
        message = str(exc).split(": ", 1)[-1]
        raise JsonlFormatError(f"{path}:{line}: {message}", line) from exc


def add_steps(
    memory: Any,
    path: str | Path,
    steps: list[Step],
    lines: list[int],
    *,
    namespace: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Append the steps `read_jsonl(path)` returned (one commit); return {'rows', 'episodes', 'lines'}."""
    if not steps:
        return {"rows": 0, "episodes": 0, "lines": 0}
    with rows_to_lines(path, lines):
        ids = memory.add(steps, namespace=namespace, progress=progress)
    episodes = {(s.namespace or namespace, s.episode_id) for s in steps}
    return {"rows": len(ids), "episodes": len(episodes), "lines": len(set(lines))}


def import_jsonl(
    memory: Any, path: str | Path, *, namespace: str | None = None, progress: bool = False
) -> dict[str, Any]:
    """Validate the whole file, then embed and append it in one commit; return {'rows', 'episodes',
    'lines'}. A bad line rejects the import before anything is written (the error names the line)."""
    steps, lines = read_jsonl(path)
    return add_steps(memory, path, steps, lines, namespace=namespace, progress=progress)
