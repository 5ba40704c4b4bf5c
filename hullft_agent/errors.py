"""Every error a user can cause, under one base class.

`HullFTError` is what the CLI (and any caller) catches to tell a user's mistake or a missing
install from a bug. Each subclass also keeps the builtin type it had before (`ValueError`,
`RuntimeError`, ...), so existing `except ValueError` handlers keep working.
"""

from __future__ import annotations


class HullFTError(Exception):
    """Base of every user-facing hullft-agent error: the message says what was wrong and what to do."""


class InvalidArgumentError(HullFTError, ValueError):
    """A value a caller passed is out of range or malformed; the message names it and what was expected."""


class InvalidTypeError(HullFTError, TypeError):
    """A caller passed an object of the wrong kind; the message names it and what was expected."""


class CLIError(HullFTError):
    """A command-line usage error: printed without a traceback, exit status 2."""


# ---------------------------------------------------------------- models and embedders
class ModelNotAvailableError(HullFTError, RuntimeError):
    """A model (or a package needed to read it) is not installed; the message says how to install it."""


class EmbedderNotAvailableError(HullFTError, RuntimeError):
    """The requested embedding model is not on this machine (the library never downloads)."""


class ContextOverflowError(HullFTError, ValueError):
    """The prompt does not fit the model's context window (and could not be truncated to fit)."""


# ---------------------------------------------------------------- memory
class InvalidStepError(HullFTError, ValueError):
    """A step (or a row of a batch) is malformed; nothing of its batch was written.

    `index` is the position of the bad row in the batch (None for a single step).
    """

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class DuplicateStepError(InvalidStepError):
    """A row the memory (or its own batch) already holds: the same id, or the same step number of the
    same episode; nothing of the batch was written."""


class InvalidWhereError(HullFTError, ValueError):
    """A user-supplied `where` clause was rejected (unsafe or does not parse against the table)."""


class JsonlFormatError(HullFTError, ValueError):
    """A line of an import file is not a valid episode or step; `line` is its 1-based number."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class EmbedderMismatchError(HullFTError, ValueError):
    """The table was written with another embedder (model name or dimension)."""


class EmbedderRequiredError(HullFTError, RuntimeError):
    """The call needs to embed text (or to create the table) but the memory has no embedder."""


class MemoryNotFoundError(EmbedderRequiredError, FileNotFoundError):
    """There is no memory table at the location and this open may not create one (no embedder, or
    `create=False`); nothing was created there."""


class NotAMemoryTableError(HullFTError, ValueError):
    """The memory's location holds something other than a hullft trajectory table (a stray folder,
    another Lance table); it is never written to."""


class MemoryPermissionError(HullFTError, PermissionError):
    """The memory's storage refused a write or a read: a read-only folder, missing permissions or
    credentials."""


class MemoryPinnedError(HullFTError, RuntimeError):
    """A write or maintenance call on a memory pinned to a past version with `checkout`."""


# ---------------------------------------------------------------- evaluation and environments
class NoUnitsError(HullFTError, ValueError):
    """No evaluation unit could be built (no episode matched, an empty memory, an empty list)."""


class ResultLogError(HullFTError, ValueError):
    """The results file is corrupt somewhere other than its last line."""


class LeakageError(HullFTError, RuntimeError):
    """A candidate (or a selected sequence) came from the unit's own episode (or excluded task)."""


class RayUnavailableError(HullFTError, RuntimeError):
    """Ray cannot be used: it is not installed, or no Ray cluster answers at the address."""


class RayWorkerError(HullFTError, RuntimeError):
    """A Ray worker failed: while starting (`unit` is None) or on a job (`unit`, `method`, `n`)."""

    def __init__(self, message: str, *, unit: str | None = None, method: str | None = None,
                 n: int | None = None) -> None:
        super().__init__(message)
        self.unit, self.method, self.n = unit, method, n


class TextWorldEnvError(HullFTError, RuntimeError):
    """A TextWorld game could not be generated, started or played."""


# ---------------------------------------------------------------- integrations
class UnsupportedMessageError(HullFTError, TypeError):
    """A message (or a content block) a chat model cannot render: it names the message and why."""
