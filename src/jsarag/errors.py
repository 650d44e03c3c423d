"""User-facing errors: each is reported by the CLI as one line with exit code 2, no traceback.

Light on purpose (no torch, transformers or faiss): the command line imports it before parsing its
arguments. The modules that raise these errors import them from here.
"""

from __future__ import annotations

from jsarag.configtools import ConfigError
from jsarag.data.schema import DataError


class UserError(ValueError):
    """A mistake in how a command was called (e.g. an existing run folder without --resume)."""


class CorruptCheckpointError(UserError):
    """A checkpoint whose files differ from its manifest, where no intact one can take its place."""


class IndexMismatchError(ValueError):
    """The index on disk was built for another corpus or another passage encoder (or is unreadable)."""


class ModelNotFoundError(ValueError):
    """A model name that is neither a built-in, a local folder, nor (offline) a cached hub model."""


class DiskFullError(OSError):
    """Too little free disk space for what a command must write: found before a long write whose size is known
    (a checkpoint, passage vectors), or when a write fails on a (nearly) full disk. Nothing half-written is left."""


class TrainingDivergedError(RuntimeError):
    """Training stopped on non-finite losses, gradients or weights (the CLI exits with code 3)."""


USER_ERRORS = (UserError, ConfigError, DataError, IndexMismatchError, ModelNotFoundError, DiskFullError)
