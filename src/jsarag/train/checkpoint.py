"""Checkpoints that resume exactly, written atomically.

    RUN_DIR/checkpoints/step_0000100/
        retriever/{prior,posterior,passage}/   Hugging Face + sentence-transformers folders
        generator/                             full weights, or the LoRA adapter (peft)
        optimizer.pt  scheduler.pt             AdamW moments, schedule position
        state.pt                               estimator state (JSA chain cache), RNG states per rank,
                                               fp16 loss scale (GradScaler)
        trainer_state.json                     step (= batches consumed: the data position)
        config.yaml                            the resolved run config
        index/                                 only when the passage encoder trains
        manifest.json                          size and SHA-256 of every other file, written last
    RUN_DIR/checkpoints/latest                 name of the newest complete checkpoint

Everything is written into a hidden temporary folder that is renamed into place only when complete,
and ``latest`` is replaced atomically afterwards: a kill at any moment leaves the previous checkpoint
usable and the new one either absent or whole. The temporary folders a kill leaves behind are removed
when the run next starts (:func:`remove_interrupted_saves`). A full disk is found before a save when the
newest checkpoint would not fit in the free space, or named when a save fails on it (DiskFullError), and the
partial save is removed either way.

What the rename cannot promise (a disk that loses or flips bytes, a copy cut short) the manifest
catches: :func:`latest_checkpoint`, the one place that chooses the checkpoint a run resumes from or is
evaluated with, skips a corrupt one for the newest intact one, saying so in one line. Checkpoints
written before manifests existed load unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from jsarag.config import Config, save_config
from jsarag.errors import CorruptCheckpointError
from jsarag.fileio import reporting_full_disk, require_space, write_text_atomic
from jsarag.train.distributed import is_main_process

CHECKPOINTS = "checkpoints"
LATEST = "latest"
MANIFEST = "manifest.json"
_STEP = re.compile(r"step_\d{7}")
# The names of the temporary checkpoint folders (tempfile's) and ``latest`` files (write_text_atomic's), 8 random
# characters after the name, and those of checkpoints being deleted (see _remove).
_TEMPORARY = re.compile(r"\.(step_\d{7}|latest)\.[a-z0-9_]{8}")


def _name(step: int) -> str:
    return f"step_{step:07d}"


def save_checkpoint(run_dir: Path, step: int, *, model, optimizer, scheduler, estimator, cfg: Config,
                    rng_states: list, index=None, keep: int = 2,
                    scaler: torch.amp.GradScaler | None = None) -> Path:
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    previous = _named_latest(root)
    hint = (f"the run's newest complete checkpoint is {previous.name}: free some space, then run again with --resume"
            if previous is not None else "free some space, then run again")
    if previous is not None:  # the same files as the last save: a full disk is found before writing any
        require_space(root, _size(previous), f"checkpoint {_name(step)}", hint)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_name(step)}.", dir=root))
    try:
        with reporting_full_disk(f"saving checkpoint {_name(step)}", root, hint):
            model.save_pretrained(tmp)
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            state = {"estimator": estimator.state_dict(), "rng": rng_states}
            if scaler is not None and scaler.is_enabled():  # fp16: the loss scale and its growth tracker
                state["scaler"] = scaler.state_dict()
            torch.save(state, tmp / "state.pt")
            (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
            save_config(cfg, tmp / "config.yaml")
            if index is not None:
                index.save(tmp / "index")
            manifest = _write_manifest(tmp)  # last: only a complete save has one
        final = root / _name(step)
        if final.exists():
            _remove(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _verified[final.resolve()] = {name: _stat(final / name) for name in manifest}  # loading it hashes nothing
    write_text_atomic(root / LATEST, final.name)
    _prune(root, keep)
    return final


def _named_latest(root: Path) -> Path | None:
    """The checkpoint folder ``latest`` names (the newest whole save), unverified; None when there is none."""
    pointer = root / LATEST
    named = root / pointer.read_text().strip() if pointer.is_file() else None
    return named if named is not None and named.is_dir() else None


def _size(folder: Path) -> int:
    """Bytes a copy of ``folder``'s files takes, those linked from elsewhere (an index's vectors) left out."""
    stats = [f.stat() for f in folder.rglob("*") if f.is_file() and not f.is_symlink()]
    return sum(st.st_size for st in stats if st.st_nlink == 1)


def _prune(root: Path, keep: int) -> None:
    if keep <= 0:
        return
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[:-keep]:
        _remove(old)


def _remove(checkpoint: Path) -> None:
    """Delete a checkpoint folder, renamed away first: a kill during the deletion leaves no half checkpoint,
    only a temporary folder that the next start removes."""
    doomed = checkpoint.parent / f".{checkpoint.name}.deleting"
    shutil.rmtree(doomed, ignore_errors=True)
    os.rename(checkpoint, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_checkpoints(run_dir: str | Path) -> None:
    """Delete all of a run's checkpoints, ``latest`` first: a kill part way leaves a run with no newest
    checkpoint (as after the first save's failure), never one that names a half-deleted folder."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return
    (root / LATEST).unlink(missing_ok=True)
    for checkpoint in sorted(p for p in root.glob("step_*") if p.is_dir()):
        _remove(checkpoint)
    shutil.rmtree(root, ignore_errors=True)


def remove_interrupted_saves(run_dir: str | Path) -> list[Path]:
    """Delete what killed saves left in ``RUN_DIR/checkpoints`` (only names this module creates);
    return the removed paths. Call it only while holding the run's lock: a save may be in progress."""
    root = Path(run_dir) / CHECKPOINTS
    removed = [p for p in (root.iterdir() if root.is_dir() else ()) if _TEMPORARY.fullmatch(p.name)]
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def _warn(text: str) -> None:
    if is_main_process():
        print(f"warning: {text}", file=sys.stderr, flush=True)


def latest_checkpoint(run_dir: str | Path, *, report: Callable[[str], None] = _warn) -> Path | None:
    """The newest intact checkpoint of a run (None when it has none): what `--resume`, `eval` and `ask` use.

    The checkpoint ``latest`` names comes first, then the other step folders, newest first. Corrupt ones
    (:func:`checkpoint_problem`) are skipped, and ``report`` gets one line that names each with its first
    bad file and the checkpoint used instead; when every checkpoint is corrupt, CorruptCheckpointError.
    """
    root = Path(run_dir) / CHECKPOINTS
    candidates = sorted((p for p in root.glob("step_*") if _STEP.fullmatch(p.name) and p.is_dir()), reverse=True)
    named = _named_latest(root)
    if named in candidates:
        candidates.insert(0, candidates.pop(candidates.index(named)))
    corrupt = []
    for path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            if corrupt:
                report(f"{'; '.join(corrupt)}; using {path.name}, the newest intact checkpoint in {root}")
            return path
        corrupt.append(f"{path.name} is corrupt ({problem})")
    if corrupt:
        raise CorruptCheckpointError(f"no intact checkpoint in {root}: {'; '.join(corrupt)}")
    return None


# ---- the manifest: size and SHA-256 of every file ---------------------------------------------------------
# What this process has verified (or saved), with each file's (size, mtime, inode) then: choosing a checkpoint
# and loading it hashes its files once, and a file changed since is hashed again.
_verified: dict[Path, dict[str, tuple[int, int, int]]] = {}


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _stat(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def _write_manifest(folder: Path) -> dict[str, dict]:
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / MANIFEST).write_text(json.dumps({"format": 1, "files": files}, indent=1) + "\n")
    return files


def _read_manifest(folder: Path) -> dict[str, dict] | None:
    """The manifest's {relative path: {size, sha256}}; None when there is none; ValueError if malformed."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not all(isinstance(e, dict) and isinstance(e.get("size"), int)
                                              and isinstance(e.get("sha256"), str) for e in files.values()):
        raise ValueError(f"not a {MANIFEST}")
    return files


def checkpoint_problem(path: str | Path) -> str | None:
    """What is wrong with the checkpoint folder ``path``, in a few words; None when it is intact.

    Sizes first (a truncated file costs no hashing), then every file's SHA-256. A checkpoint written
    before manifests existed passes unverified when it has its trainer_state.json.
    """
    path = Path(path)
    try:
        files = _read_manifest(path)
    except (OSError, ValueError):
        return f"{MANIFEST} is unreadable"
    if files is None:
        return None if (path / "trainer_state.json").is_file() else f"no {MANIFEST}: not a complete save"
    stats = {}
    for name, entry in files.items():
        try:
            stats[name] = _stat(path / name)
        except OSError:
            return f"{name} is missing"
        if stats[name][0] != entry["size"]:
            return f"{name} has {stats[name][0]:,} bytes, the manifest says {entry['size']:,}"
    if _verified.get(path.resolve()) == stats:
        return None
    for name, entry in files.items():
        try:
            if _sha256(path / name) != entry["sha256"]:
                return f"{name} differs from its SHA-256 in the manifest"
        except OSError:
            return f"{name} is unreadable"
    _verified[path.resolve()] = stats
    return None


def check_intact(path: str | Path) -> Path:
    """``path`` if it is intact (see :func:`checkpoint_problem`); CorruptCheckpointError otherwise."""
    problem = checkpoint_problem(path)
    if problem is not None:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt: {problem}")
    return Path(path)


def checkpoint_step(path: Path) -> int:
    return json.loads((Path(path) / "trainer_state.json").read_text())["step"]


def load_training_state(path: Path, *, optimizer, scheduler, estimator,
                        scaler: torch.amp.GradScaler | None = None) -> tuple[int, list]:
    """Restore optimiser, schedule, estimator state and, for an fp16 run, the loss scale; return (step,
    per-rank RNG states). An fp16 run resumed from a checkpoint saved in another precision starts from the
    scaler's initial scale."""
    path = check_intact(path)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    state = torch.load(path / "state.pt", weights_only=False)
    estimator.load_state_dict(state["estimator"])
    if scaler is not None and scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return checkpoint_step(path), state["rng"]
