"""Writing a small file whole or not at all; free disk space, checked before a long write and named when a write
fails for want of it."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from jsarag.errors import DiskFullError

# A write that fails while less than this is free on its disk failed for want of space, whatever the writer's own
# message says (torch.save says "unexpected pos ..." or "file write failed", safetensors "I/O error: ...").
NEARLY_FULL = 64 * 2**20
_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


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


def gib(size: float) -> str:
    return f"{size / 2**30:.2f} GiB"


def free_bytes(path: str | Path) -> int:
    """Free space on the disk that holds ``path`` (or would: its nearest existing parent folder)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def require_space(path: str | Path, need: int, what: str, hint: str = "") -> None:
    """DiskFullError before a write of about ``need`` bytes into ``path`` when its disk has less free."""
    free = free_bytes(path)
    if need > free:
        raise DiskFullError(f"{what} needs about {gib(need)} at {path}, and only {gib(free)} is free there"
                            + (f"; {hint}" if hint else ""))


def out_of_space(err: BaseException, path: str | Path) -> bool:
    """Whether ``err``, raised while writing into ``path``, came from a full disk: an errno saying so anywhere in
    its chain, or less than NEARLY_FULL left free (checked before the partial write is removed)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _SPACE_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return free_bytes(path) < NEARLY_FULL
    except OSError:
        return False


@contextlib.contextmanager
def reporting_full_disk(what: str, path: str | Path, hint: str = "") -> Iterator[None]:
    """Around a write into ``path``: a failure on a full disk is raised as DiskFullError naming ``what``, where and
    the free space, chained to the writer's own error; other failures pass unchanged. Put it inside the code that
    removes the partial write, so that the free space is read while the disk is still full."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as err:
        if not out_of_space(err, path):
            raise
        raise DiskFullError(f"{what} into {path} failed: the disk is full ({gib(free_bytes(path))} free; "
                            f"{type(err).__name__}: {str(err).strip() or 'no message'}). Nothing of it was kept"
                            + (f"; {hint}" if hint else "")) from err
