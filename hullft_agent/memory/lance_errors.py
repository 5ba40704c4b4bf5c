"""What a LanceDB failure means: a commit conflict worth retrying, a missing or already existing table.

Exception types are used where lancedb provides them: `lance_namespace.errors` (raised through
namespace-backed connections) and the remote client's `HttpError` (its HTTP status). A local table
raises a plain `RuntimeError`/`ValueError` whose only distinguishing mark is the Rust error's text,
so those cases alone are recognised by message.
"""

from __future__ import annotations

import errno

from lance_namespace.errors import (
    ConcurrentModificationError,
    PermissionDeniedError,
    TableAlreadyExistsError,
    TableNotFoundError,
    ThrottlingError,
    UnauthenticatedError,
)
from lancedb.remote.errors import HttpError

from hullft_agent.errors import MemoryPermissionError

_CONFLICT_STATUS = (409, 429)  # conflict, too many requests
# Local commit conflicts ("Retryable commit conflict for version N", "Too many concurrent writers")
# carry no exception type of their own: only these words tell them apart.
_CONFLICT_WORDS = ("conflict", "retryable", "too many concurrent", "concurrent commit")
_REFUSED_STATUS = (401, 403)  # unauthenticated, forbidden
_REFUSED_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)
# A refused local write surfaces as RuntimeError("lance error: ... Permission denied (os error 13)"):
# the OS error's text (and number) is all that marks it.
_REFUSED_WORDS = ("permission denied", "os error 13", "read-only file system", "os error 30", "access denied")


def is_conflict(exc: BaseException) -> bool:
    """A concurrent commit won the race: retrying against the latest version can succeed."""
    if isinstance(exc, (ConcurrentModificationError, ThrottlingError)):
        return True
    if isinstance(exc, HttpError):
        return exc.status_code in _CONFLICT_STATUS
    message = str(exc).lower()  # no exception type for a local conflict (see _CONFLICT_WORDS)
    return isinstance(exc, (RuntimeError, OSError, ValueError)) and any(w in message for w in _CONFLICT_WORDS)


def is_table_missing(exc: BaseException) -> bool:
    """Opening a table failed because it does not exist."""
    if isinstance(exc, (TableNotFoundError, FileNotFoundError)):
        return True
    if isinstance(exc, HttpError):
        return exc.status_code == 404
    # a local open raises ValueError("Table 't' was not found"): no type, only the text
    message = str(exc).lower()
    return isinstance(exc, ValueError) and ("not found" in message or "does not exist" in message)


def is_table_existing(exc: BaseException) -> bool:
    """Creating a table failed because another process created it first."""
    if isinstance(exc, TableAlreadyExistsError):
        return True
    if isinstance(exc, HttpError):
        return exc.status_code == 409
    # a local create raises ValueError("Table 't' already exists"): no type, only the text
    return isinstance(exc, ValueError) and "already exists" in str(exc).lower()


def is_permission_denied(exc: BaseException) -> bool:
    """The storage refused the operation: file permissions, a read-only file system, credentials."""
    if isinstance(exc, (PermissionDeniedError, UnauthenticatedError, PermissionError)):
        return True
    if isinstance(exc, HttpError):
        return exc.status_code in _REFUSED_STATUS
    if isinstance(exc, OSError) and exc.errno in _REFUSED_ERRNOS:
        return True
    message = str(exc).lower()  # no exception type for a refused local write (see _REFUSED_WORDS)
    return isinstance(exc, (RuntimeError, OSError, ValueError)) and any(w in message for w in _REFUSED_WORDS)


def permission_error(exc: BaseException, what: str, location: str) -> MemoryPermissionError | None:
    """A `MemoryPermissionError` saying what was refused where, when `exc` is a refusal; else None."""
    if not is_permission_denied(exc):
        return None
    return MemoryPermissionError(
        f"cannot {what} the memory at {location}: permission denied by its storage "
        f"(a read-only folder, or missing permissions or credentials): {exc}"
    )
