"""User-facing errors: each is reported by the CLI as one line with exit code 2, no traceback."""

from __future__ import annotations

from jsarag.configtools import ConfigError
from jsarag.data import DataError
from jsarag.index.faiss_index import IndexMismatchError
from jsarag.models.pretrained import ModelNotFoundError


class UserError(ValueError):
    """A mistake in how a command was called (e.g. an existing run folder without --resume)."""


class TrainingDivergedError(RuntimeError):
    """Training stopped on non-finite losses, gradients or weights (the CLI exits with code 3)."""


USER_ERRORS = (UserError, ConfigError, DataError, IndexMismatchError, ModelNotFoundError)
