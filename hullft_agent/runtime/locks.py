"""One re-entrant lock per model (or memory) object, shared by every wrapper of it."""

from __future__ import annotations

import threading
import weakref
from typing import Any

_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_FALLBACK_LOCKS: dict[int, threading.RLock] = {}
_GUARD = threading.Lock()


def base_module(obj: Any) -> Any:
    """The plain model under a peft wrapper (anything else unchanged)."""
    get_base = getattr(obj, "get_base_model", None)
    if callable(get_base) and type(obj).__name__.startswith("Peft"):
        return get_base()
    return obj


def lock_for(obj: Any) -> threading.RLock:
    """The lock of `obj`: a peft-wrapped model and its base share one.

    So two runtimes (or a runtime and an evaluation) built on the same weights never run at the
    same time, whichever wrapper each holds.
    """
    key = base_module(obj)
    with _GUARD:
        try:
            lock = _LOCKS.get(key)
            if lock is None:
                lock = _LOCKS[key] = threading.RLock()
        except TypeError:  # not weak-referenceable: keep it for the life of the process
            lock = _FALLBACK_LOCKS.setdefault(id(key), threading.RLock())
        return lock
