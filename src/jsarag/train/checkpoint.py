"""Checkpoints that resume exactly, written atomically.

    RUN_DIR/checkpoints/step_0000100/
        retriever/{prior,posterior,passage}/   Hugging Face + sentence-transformers folders
        generator/                             full weights, or the LoRA adapter (peft)
        optimizer.pt  scheduler.pt             AdamW moments, schedule position
        state.pt                               estimator state (JSA chain cache), RNG states per rank
        trainer_state.json                     step (= batches consumed: the data position)
        config.yaml                            the resolved run config
        index/                                 only when the passage encoder trains
    RUN_DIR/checkpoints/latest                 name of the newest complete checkpoint

Everything is written into a hidden temporary folder that is renamed into place only when complete,
and ``latest`` is replaced atomically afterwards: a kill at any moment leaves the previous checkpoint
usable and the new one either absent or whole. The temporary folders a kill leaves behind are removed
when the run next starts (:func:`remove_interrupted_saves`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from jsarag.config import Config, save_config

CHECKPOINTS = "checkpoints"
LATEST = "latest"
# The names tempfile gives the temporary checkpoint folders and ``latest`` files below (8 random characters).
_TEMPORARY = re.compile(r"\.(step_\d{7}|latest)\.[a-z0-9_]{8}")


def _name(step: int) -> str:
    return f"step_{step:07d}"


def save_checkpoint(run_dir: Path, step: int, *, model, optimizer, scheduler, estimator, cfg: Config,
                    rng_states: list, index=None, keep: int = 2) -> Path:
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_name(step)}.", dir=root))
    try:
        model.save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"estimator": estimator.state_dict(), "rng": rng_states}, tmp / "state.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
        save_config(cfg, tmp / "config.yaml")
        if index is not None:
            index.save(tmp / "index")
        final = root / _name(step)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _write_atomic(root / LATEST, final.name)
    _prune(root, keep)
    return final


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _prune(root: Path, keep: int) -> None:
    if keep <= 0:
        return
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


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


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        path = root / pointer.read_text().strip()
        if (path / "trainer_state.json").is_file():
            return path
    done = sorted(p for p in root.glob("step_*") if (p / "trainer_state.json").is_file())
    return done[-1] if done else None


def checkpoint_step(path: Path) -> int:
    return json.loads((Path(path) / "trainer_state.json").read_text())["step"]


def load_training_state(path: Path, *, optimizer, scheduler, estimator) -> tuple[int, list]:
    """Restore optimiser, schedule and estimator state; return (step, per-rank RNG states)."""
    path = Path(path)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    state = torch.load(path / "state.pt", weights_only=False)
    estimator.load_state_dict(state["estimator"])
    return checkpoint_step(path), state["rng"]
