"""The per-unit results log: one JSON line per finished (unit, method, N), appended and fsynced.

A killed run leaves every finished line; at most the last one is torn (no trailing newline, or not
JSON). `ResultLog.open` cuts a torn tail off before appending, so the file stays valid JSON lines.
A corrupt line that is not the last one means something else wrote the file: that is an error.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from hullft_agent.errors import InvalidArgumentError, ResultLogError

logger = logging.getLogger(__name__)

ResultKey = tuple[str, str, int]


def result_key(record: dict[str, Any]) -> ResultKey:
    return (str(record["unit"]), str(record["method"]), int(record["n"]))


def read_results(path: str | os.PathLike[str], *, repair: bool = False) -> tuple[list[dict[str, Any]], int]:
    """The records of a results file and how many torn bytes its tail had (cut off when `repair`).

    A later record with the same (unit, method, N) replaces an earlier one.
    """
    path = Path(path)
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    good_end = 0
    records: dict[ResultKey, dict[str, Any]] = {}
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        is_last = number == len(lines)
        if is_last and raw == b"":
            break  # the file ends with a newline
        try:
            record = json.loads(raw.decode("utf-8"))
            if not isinstance(record, dict) or record.get("type") != "result":
                raise InvalidArgumentError("not a result record")
            key = result_key(record)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            if is_last:  # a torn final line from a killed run
                break
            raise ResultLogError(
                f"{path}: line {number} is corrupt ({exc}); only a torn last line is repaired automatically. "
                "Move the file away or start a new output folder."
            ) from exc
        if is_last:  # complete JSON but no newline: torn after the payload; keep it, add the newline
            records[key] = record
            good_end = len(data)
            break
        records[key] = record
        good_end += len(raw) + 1
    torn = len(data) - good_end
    if repair and (torn or (data and not data.endswith(b"\n"))):
        with open(path, "r+b") as handle:
            handle.truncate(good_end)
            if good_end and not data[:good_end].endswith(b"\n"):
                handle.seek(good_end)
                handle.write(b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        if torn:
            logger.warning("%s: cut off a torn last line (%d bytes) left by an interrupted run", path, torn)
    return list(records.values()), torn


class ResultLog:
    """Append-only JSONL of result records; each `append` is flushed and fsynced before it returns."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps({"type": "result", **record}, ensure_ascii=False, allow_nan=False)
        self._handle.write(line + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()

    def __enter__(self) -> ResultLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def rewrite_results(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> None:
    """Replace the file with exactly `records` (atomically), e.g. to drop an unfinished per_task group."""
    from hullft_agent.files import write_atomic

    text = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records)
    write_atomic(path, text)
