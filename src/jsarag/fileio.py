"""Writing a small file whole or not at all."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> None:
    """``text`` into ``path`` (UTF-8) whole or not at all: a reader sees the previous file or the new one, never a
    part, even while other processes write the same path (each writes its own temporary file beside it, ``.NAME.``
    and 8 random hex digits, removed if the write fails). The data reach the disk before the rename, so that a power
    loss cannot leave an empty file under the name. The file gets the umask's permissions, not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")  # the form checkpoint._TEMPORARY recognises
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
