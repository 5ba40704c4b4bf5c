"""One writer at a time numbers steps: an advisory file lock beside a local memory's table.

Lance appends from several processes never conflict, so two writers that read an episode's last
step at the same moment would hand out the same next number. Around "read the episode's steps,
number, commit", writers of a local memory hold an exclusive `flock` on `.<table>.write-lock` in the
memory's folder; the kernel releases it when a holder dies, so a killed writer never blocks the
others. Object stores have no such lock (see docs/memory.md, Durability).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hullft_agent.memory.lance_errors import permission_error

try:
    import fcntl
except ImportError:  # not POSIX (Windows): writers are not serialised across processes
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)


def lock_path(root: Path, table: str) -> Path:
    return root / f".{table}.write-lock"


@contextmanager
def write_lock(root: Path | None, table: str) -> Iterator[None]:
    """Hold the memory's write lock (`root` None: not a local folder, nothing to lock)."""
    if root is None or fcntl is None:
        yield
        return
    path = lock_path(root, table)
    try:  # read-only is enough to flock, so a lock file made by another user serves too
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError as exc:
        refused = permission_error(exc, "write to", str(root))
        if refused is not None:
            raise refused from exc
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        logger.debug("holding %s", path)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
