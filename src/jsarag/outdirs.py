"""Output folders: which folders a command may write into, and the lock of a run folder.

A command writes only into a folder that does not exist yet, an empty one, or one of its own kind:

    run          config.yaml beside checkpoints/, metrics.jsonl or the lock file of `jsarag train`; a
                 folder with the lock file but no config.yaml is a run stopped before its first write
    index        meta.json with index.faiss or trained.faiss, a save of them being completed, or the
                 passage vectors of a build that was stopped (vectors/vectors.json)
    quickstart   quickstart.json or eval_before/ (the quickstart trains into its own folder)

Anything else is refused with one line before a file is written, and nothing a command did not write
is ever deleted. `jsarag train` holds an OS lock on its run folder for the whole run (rank 0): a
second process on the same folder is refused, naming the holder's pid; the lock goes with the process.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from jsarag.errors import UserError
from jsarag.index.faiss_index import COMMIT_DIR, INDEX_FILE, META_FILE, STAGING_DIR, TRAINED_FILE, VECTORS_DIR
from jsarag.index.vectors import META_FILE as VECTORS_META

RUN_LOCK = ".jsarag-train.lock"


def is_empty(folder: Path, ignoring: tuple[str, ...] = ()) -> bool:
    """Missing, or a folder with nothing in it but the names in ``ignoring``."""
    return not folder.exists() or (folder.is_dir() and all(p.name in ignoring for p in folder.iterdir()))


def is_run(folder: Path) -> bool:
    """A run that has written its config: it continues only with --resume."""
    return (folder / "config.yaml").is_file() and any((folder / name).exists() for name in
                                                      ("checkpoints", "metrics.jsonl", RUN_LOCK))


def is_index(folder: Path) -> bool:
    saved = (folder / META_FILE).is_file() and any((folder / f).is_file() for f in (INDEX_FILE, TRAINED_FILE))
    return saved or (folder / COMMIT_DIR).is_dir() or (folder / VECTORS_DIR / VECTORS_META).is_file()


def is_quickstart(folder: Path) -> bool:
    return (folder / "quickstart.json").is_file() or (folder / "eval_before").is_dir()


def _contents(folder: Path, shown: int = 3) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _foreign(folder: Path, kind: str, flag: str) -> UserError:
    if not folder.is_dir():
        return UserError(f"{folder} exists and is not a folder; choose another {flag}")
    return UserError(f"{folder} exists and is not {kind} (it holds {_contents(folder)}); "
                     f"choose another {flag} (nothing was changed)")


def check_run_out(run_dir: Path, *, resume: bool) -> bool:
    """Whether ``run_dir`` already holds a run that ``jsarag train`` may continue; raise UserError if
    it may not write there at all. Reads only."""
    holder = lock_holder(run_dir)
    if holder is not None:
        raise _in_use(run_dir, holder)
    if is_run(run_dir):
        if not resume:
            raise UserError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --out")
        return True
    if is_empty(run_dir) or is_quickstart(run_dir) or (run_dir / RUN_LOCK).is_file():
        return False  # the last: a run stopped before its config was written starts afresh
    raise _foreign(run_dir, "a jsarag run folder", "--out")


def check_index_out(out: Path, *, overwrite: bool, resume: bool = False) -> None:
    """Raise UserError unless `jsarag index build` may write an index into ``out``. Reads only."""
    if is_empty(out, ignoring=(STAGING_DIR,)):  # a first save that was killed is replaced
        return
    if is_index(out):
        if not (overwrite or resume):
            raise UserError(f"{out} already holds an index: pass --resume to finish a build that was stopped, "
                            f"--overwrite to replace it (only the index's own files are replaced), or choose "
                            f"another --out")
        return
    raise _foreign(out, "an index folder", "--out")


def _in_use(run_dir: Path, holder: str) -> UserError:
    return UserError(f"{run_dir} is in use by another jsarag process (pid {holder}); "
                     f"wait for it to end or choose another --out")


def _read_pid(fd: int) -> str:
    return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"


def lock_holder(run_dir: Path) -> str | None:
    """The pid written in the lock file while another process holds the lock; None if nobody does."""
    try:
        fd = os.open(run_dir / RUN_LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(fd)
    finally:
        os.close(fd)
    return None


def _try_lock(fd: int, attempts: int = 3) -> bool:
    """An exclusive lock, retried briefly: a :func:`lock_holder` probe holds a shared one for an instant."""
    for attempt in range(attempts):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < attempts:
                time.sleep(0.05)
    return False


class RunLock:
    """An exclusive ``flock`` on the run folder's lock file, which holds the holder's pid.

    The kernel releases it when the process ends, however it ends. The file stays after a run (it marks
    the folder as a run); a folder this lock created and in which nothing else was written is removed
    again on release, so that a run refused before its first file leaves nothing behind.
    """

    def __init__(self, run_dir: Path):
        self.run_dir, self.path = run_dir, run_dir / RUN_LOCK
        while True:
            self.created = not run_dir.exists()
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                holder = _read_pid(fd)
                os.close(fd)
                raise _in_use(run_dir, holder)
            if self.path.exists() and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)  # we locked a lock file its previous holder had just removed; lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is None:
            return
        if self.created and os.listdir(self.run_dir) == [RUN_LOCK]:
            self.path.unlink()
            self.run_dir.rmdir()
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
