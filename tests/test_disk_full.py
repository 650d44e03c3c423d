"""A full disk: found before a long write whose size is known (a checkpoint the size of the last one, the passage
vectors still to encode), named when a write fails on it (DiskFullError: what, where, the free space, how to go
on), with nothing half-written left and the previous checkpoint still the run's newest.

Most tests fake the free space (``jsarag.fileio.free_bytes``); the last ones write onto a real 4 MiB tmpfs, where
torch.save fails with its own words ("unexpected pos ...") and safetensors with an errno; they need root and are
skipped where mounting is refused.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import NoState, stand_in_model

from jsarag import fileio
from jsarag.config import load_config
from jsarag.errors import USER_ERRORS, DiskFullError
from jsarag.index.vectors import VectorsMeta, VectorStore
from jsarag.train.checkpoint import LATEST, latest_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
MiB = 2**20


def saver(run: Path, width: int = 16):
    """save(step): a checkpoint of a stand-in model after one more optimiser step (Adam moments included)."""
    model = stand_in_model(width)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    cfg = load_config(TINY)

    def save(step: int) -> Path:
        model.linear(torch.ones(2, width)).sum().backward()
        optimizer.step()
        scheduler.step()
        return save_checkpoint(run, step, model=model, optimizer=optimizer, scheduler=scheduler,
                               estimator=NoState(), cfg=cfg, rng_states=[None], keep=2)
    return save


def checkpoint_names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def fake_free(monkeypatch, free: int) -> None:
    monkeypatch.setattr(fileio, "free_bytes", lambda path: free)


# ---- the helpers -----------------------------------------------------------------------------------------------
def test_require_space_names_what_where_and_both_sizes(tmp_path, monkeypatch):
    fileio.require_space(tmp_path, 10, "ten bytes")  # this disk has ten bytes free
    fake_free(monkeypatch, 3 * 2**30)
    fileio.require_space(tmp_path / "not" / "yet", 3 * 2**30, "exactly what is free")
    with pytest.raises(DiskFullError) as caught:
        fileio.require_space(tmp_path / "out", 5 * 2**30, "the vectors", "build elsewhere")
    assert str(caught.value) == (f"the vectors needs about 5.00 GiB at {tmp_path / 'out'}, and only 3.00 GiB is "
                                 f"free there; build elsewhere")
    assert isinstance(caught.value, USER_ERRORS)  # the CLI reports it in one line, exit code 2


def test_free_bytes_of_a_path_not_yet_made_is_its_nearest_folders(tmp_path):
    assert fileio.free_bytes(tmp_path / "a" / "b") == shutil.disk_usage(tmp_path).free


def test_a_failure_is_put_down_to_space_by_its_errno_or_by_a_nearly_full_disk(tmp_path, monkeypatch):
    fake_free(monkeypatch, fileio.NEARLY_FULL)  # exactly the margin: not nearly full
    assert fileio.out_of_space(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert fileio.out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path)
    try:  # a library's own error raised while handling the OSError
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("file write failed")
    except RuntimeError as chained:
        assert fileio.out_of_space(chained, tmp_path)
    assert not fileio.out_of_space(RuntimeError("unexpected pos 576 vs 534"), tmp_path)
    assert not fileio.out_of_space(OSError(errno.EACCES, "Permission denied"), tmp_path)
    fake_free(monkeypatch, fileio.NEARLY_FULL - 1)
    assert fileio.out_of_space(RuntimeError("unexpected pos 576 vs 534"), tmp_path)


def test_reporting_full_disk_turns_only_a_full_disks_failure_into_disk_full_error(tmp_path, monkeypatch):
    fake_free(monkeypatch, 10 * MiB)
    with pytest.raises(DiskFullError) as caught:
        with fileio.reporting_full_disk("saving x", tmp_path, "free some space"):
            raise RuntimeError("unexpected pos 576 vs 534 ")
    assert str(caught.value) == (f"saving x into {tmp_path} failed: the disk is full (0.01 GiB free; RuntimeError: "
                                 f"unexpected pos 576 vs 534). Nothing of it was kept; free some space")
    assert isinstance(caught.value.__cause__, RuntimeError)
    fake_free(monkeypatch, 10 * 2**30)
    with pytest.raises(ValueError, match="a bug"):  # plenty of space: the writer's own error, unchanged
        with fileio.reporting_full_disk("saving x", tmp_path):
            raise ValueError("a bug")


# ---- checkpoints -----------------------------------------------------------------------------------------------
def test_a_checkpoint_larger_than_the_free_space_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    save = saver(tmp_path)
    first = save(1)
    size = sum(f.stat().st_size for f in first.rglob("*") if f.is_file())
    fake_free(monkeypatch, size - 1)
    written = []
    monkeypatch.setattr(torch, "save", lambda *a, **k: written.append(a))
    with pytest.raises(DiskFullError) as caught:
        save(2)
    assert written == []
    message = str(caught.value)
    assert message.startswith(f"checkpoint step_0000002 needs about {fileio.gib(size)} at {tmp_path / 'checkpoints'}"
                              f", and only {fileio.gib(size - 1)} is free there")
    assert message.endswith("the run's newest complete checkpoint is step_0000001: free some space, then run "
                            "again with --resume")
    assert checkpoint_names(tmp_path) == [LATEST, "step_0000001"]
    assert latest_checkpoint(tmp_path) == first


def test_a_save_that_fills_the_disk_leaves_nothing_and_keeps_the_newest_checkpoint(tmp_path, monkeypatch):
    save = saver(tmp_path)
    save(1)
    real_save = torch.save

    def fills_the_disk(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)  # a part of the checkpoint is written, then the disk is full
        fake_free(monkeypatch, 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", fills_the_disk)
    with pytest.raises(DiskFullError, match=r"^saving checkpoint step_0000002 into .* failed: the disk is full "
                                            r"\(0.00 GiB free; RuntimeError: \[enforce fail .*unexpected pos 576 vs "
                                            r"534\)\. Nothing of it was kept; the run's newest complete checkpoint "
                                            r"is step_0000001"):
        save(2)
    assert checkpoint_names(tmp_path) == [LATEST, "step_0000001"]  # no hidden half-save either
    assert latest_checkpoint(tmp_path).name == "step_0000001"


def test_the_first_save_failing_on_a_full_disk_says_so_and_leaves_nothing(tmp_path, monkeypatch):
    def fails(*args, **kwargs):
        fake_free(monkeypatch, 0)
        raise RuntimeError("file write failed")

    monkeypatch.setattr(torch, "save", fails)  # no earlier checkpoint to measure: the failure itself tells
    with pytest.raises(DiskFullError, match="the disk is full .* Nothing of it was kept; free some space, then run "
                                            "again$"):
        saver(tmp_path)(1)
    assert checkpoint_names(tmp_path) == []


def test_a_failed_save_on_a_disk_with_room_raises_the_writers_own_error(tmp_path, monkeypatch):
    save = saver(tmp_path)
    save(1)

    def broken(*args, **kwargs):
        raise RuntimeError("not a disk problem")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="^not a disk problem$"):
        save(2)
    assert checkpoint_names(tmp_path) == [LATEST, "step_0000001"]


def test_the_size_expected_of_a_checkpoint_leaves_out_files_linked_from_elsewhere(tmp_path):
    from jsarag.train.checkpoint import _size

    (tmp_path / "own").write_bytes(b"x" * 100)
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "shard").write_bytes(b"y" * 1000)
    os.link(tmp_path / "store" / "shard", tmp_path / "linked")  # an index's vectors, linked into the save
    (tmp_path / "store" / "other").write_bytes(b"z" * 10)
    assert _size(tmp_path) == 100 + 10


# ---- passage vectors -------------------------------------------------------------------------------------------
def meta(rows: int = 10, dim: int = 4) -> VectorsMeta:
    return VectorsMeta(rows=rows, dim=dim, shard_rows=4, corpus_hash="c", encoder={"name": "random"})


def test_missing_bytes_are_the_sizes_of_the_shards_not_yet_written(tmp_path):
    store = VectorStore.create(tmp_path / "vectors", meta(), resume=False)
    whole = store.missing_bytes()
    store.write_shard(1, np.zeros((4, 4), np.float32))
    assert store.missing_bytes() == whole - (tmp_path / "vectors" / "shard-00001.npy").stat().st_size
    store.write_shard(0, np.zeros((4, 4), np.float32))
    store.write_shard(2, np.zeros((2, 4), np.float32))  # rows 8 and 9
    assert store.missing_bytes() == 0
    assert whole == sum(p.stat().st_size for p in (tmp_path / "vectors").glob("shard-*.npy"))


def test_a_shard_written_onto_a_full_disk_leaves_no_temporary_file(tmp_path, monkeypatch):
    store = VectorStore.create(tmp_path / "vectors", meta(), resume=False)
    fake_free(monkeypatch, 0)
    from jsarag.index import vectors

    def no_space(rows, dim):  # called once the temporary file is open
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(vectors, "_header_bytes", no_space)
    with pytest.raises(DiskFullError, match=r"^writing passage vectors shard-00000.npy into .* build again with "
                                            r"--resume$"):
        store.write_shard(0, np.zeros((4, 4), np.float32))
    assert sorted(p.name for p in (tmp_path / "vectors").iterdir()) == ["vectors.json"]


def test_index_build_refuses_before_encoding_when_the_vectors_will_not_fit(tmp_path, monkeypatch, capsys):
    """`jsarag index build` through its CLI function: one line on standard error, exit code 2, no shard."""
    import typer

    from jsarag import cli

    fake_free(monkeypatch, 1000)  # the tiny corpus's 185 passages need 185 x 32 x 2 bytes and headers
    with pytest.raises(typer.Exit) as caught:
        cli.index_build(config=TINY, out=tmp_path / "index", overwrite=False, resume=False, overrides=[])
    assert caught.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the passage vectors to encode (1 of 1 shards) needs about 0.00 GiB at ")
    assert err.endswith("and only 0.00 GiB is free there; free some space or build the index elsewhere (--out)\n")
    assert err.count("\n") == 1
    assert list((tmp_path / "index").rglob("shard-*")) == []


# ---- a real full disk ------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs at tmp_path/disk (root only; skipped where mounting is refused)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)  # lazy: a file a failed writer left open


def test_on_a_real_full_disk_the_second_checkpoint_is_refused_and_the_first_kept(small_disk):
    save = saver(small_disk, width=512)  # weights 1 MiB, with the Adam moments 3 MiB a checkpoint
    save(1)
    with pytest.raises(DiskFullError, match="checkpoint step_0000002 needs about 0.00 GiB"):
        save(2)  # 4 MiB holds one, not two: refused by the size of the first
    assert checkpoint_names(small_disk) == [LATEST, "step_0000001"]


def test_on_a_real_full_disk_a_failing_save_is_named_and_leaves_nothing(small_disk):
    with pytest.raises(DiskFullError, match="saving checkpoint step_0000001 into .* failed: the disk is full"):
        saver(small_disk, width=640)(1)  # 1.6 MiB of weights, then 3.1 MiB of optimiser state: does not fit
    assert checkpoint_names(small_disk) == []
    assert shutil.disk_usage(small_disk).used < 64 * 1024  # the partial save was removed
