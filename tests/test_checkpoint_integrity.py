"""Checkpoints that verify themselves (issue 16, item 5): a manifest with the size and SHA-256 of every
file, checked when a checkpoint is chosen or loaded; a fallback to the newest intact checkpoint; and a
kill test.

The manifest tests save checkpoints of a small stand-in model in this process (fast). The CLI tests run
``python -m jsarag`` with the tiny models of ``configs/tiny.yaml``.

The kill test SIGKILLs ``jsarag train`` at random moments of its steps and saves (``JSARAG_KILL_TRIALS``
trials, default 1 (suite time); the issue asks for 20:
``JSARAG_KILL_TRIALS=20 pytest -s tests/test_checkpoint_integrity.py
-k kill``). Trial ``i`` kills ``u_i`` x WINDOW after the run's ``checkpoints/`` folder appears (its first save
began), where WINDOW is the reference run's time from that moment to its last checkpoint plus 0.5 s, and
``u_i`` comes from ``random.Random(JSARAG_KILL_SEED * 1000 + i)`` (default seed 0): a failure names its seed
and moment, and reruns at about the same moment. Kills before the first save are covered in test_safety.py
(`--resume` of a run without a checkpoint).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import NoState, stand_in_model
from safetensors.torch import load_file

from jsarag.config import load_config
from jsarag.errors import CorruptCheckpointError
from jsarag.outdirs import RUN_LOCK
from jsarag.train import checkpoint
from jsarag.train.checkpoint import (
    MANIFEST,
    check_intact,
    checkpoint_problem,
    latest_checkpoint,
    load_training_state,
    save_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
TRIALS = int(os.environ.get("JSARAG_KILL_TRIALS", "1"))
SEED = int(os.environ.get("JSARAG_KILL_SEED", "0"))
STEPS = 8
# JSA with its chain cache (estimator state in state.pt), a checkpoint after every step, two kept.
RUN_ARGS = [f"train.steps={STEPS}", "train.save_every=1", "estimator.jsa.chain_cache=true", "data.dev=null"]


def no_report(line: str) -> None:
    raise AssertionError(f"unexpected report: {line}")


# ---- the manifest, on checkpoints of a stand-in model ------------------------------------------------------
def stand_in_training():
    model = stand_in_model()
    optimizer = torch.optim.AdamW(model.parameters())
    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


@pytest.fixture
def run(tmp_path) -> Path:
    """A run folder with the checkpoints of steps 1 and 2 of the stand-in model."""
    model, optimizer, scheduler = stand_in_training()
    cfg = load_config(TINY)
    for step in (1, 2):
        model.linear(torch.ones(2, 64)).sum().backward()
        optimizer.step()
        scheduler.step()
        save_checkpoint(tmp_path, step, model=model, optimizer=optimizer, scheduler=scheduler, estimator=NoState(),
                        cfg=cfg, rng_states=[None], keep=0)
    return tmp_path


@pytest.fixture
def new_process(monkeypatch):
    """What this process has verified or saved is forgotten, as by a new `jsarag` command."""
    monkeypatch.setattr(checkpoint, "_verified", {})


def step(run: Path, n: int) -> Path:
    return run / "checkpoints" / f"step_{n:07d}"


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def flip_byte(path: Path) -> None:
    """One bit of one byte in the middle, size and name unchanged."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))


def test_a_checkpoint_carries_a_manifest_of_every_file(run):
    import hashlib

    folder = step(run, 2)
    files = json.loads((folder / MANIFEST).read_text())["files"]
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    assert sorted(files) == on_disk and "generator/model.safetensors" in files and "optimizer.pt" in files
    for name, entry in files.items():
        data = (folder / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name


CORRUPTIONS = {  # id -> (damage done to the newest checkpoint, words of the report)
    "truncated-weights": (lambda c: truncate(c / "generator" / "model.safetensors"),
                          "generator/model.safetensors has"),
    "truncated-optimizer": (lambda c: truncate(c / "optimizer.pt"), "optimizer.pt has"),
    "flipped-byte": (lambda c: flip_byte(c / "generator" / "model.safetensors"),
                     "generator/model.safetensors differs from its SHA-256"),
    "missing-file": (lambda c: (c / "state.pt").unlink(), "state.pt is missing"),
    "broken-manifest": (lambda c: (c / MANIFEST).write_text("{not json"), f"{MANIFEST} is unreadable"),
}


@pytest.mark.parametrize("damage, words", CORRUPTIONS.values(), ids=CORRUPTIONS)
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(run, new_process, damage, words):
    damage(step(run, 2))
    reports = []
    assert latest_checkpoint(run, report=reports.append) == step(run, 1)
    assert len(reports) == 1 and "step_0000002 is corrupt" in reports[0] and words in reports[0], reports
    assert "using step_0000001" in reports[0]
    with pytest.raises(CorruptCheckpointError, match=words.split()[0]):
        check_intact(step(run, 2))
    model, optimizer, scheduler = stand_in_training()
    with pytest.raises(CorruptCheckpointError):  # loading verifies too, e.g. a checkpoint given by path
        load_training_state(step(run, 2), optimizer=optimizer, scheduler=scheduler, estimator=NoState())
    assert load_training_state(step(run, 1), optimizer=optimizer, scheduler=scheduler, estimator=NoState())[0] == 1


def test_a_corruption_after_this_process_verified_a_checkpoint_is_still_found(run):
    assert latest_checkpoint(run, report=no_report) == step(run, 2)
    time.sleep(0.02)  # a later write moves the file's mtime even on a coarse clock
    flip_byte(step(run, 2) / "optimizer.pt")
    assert "optimizer.pt differs" in checkpoint_problem(step(run, 2))


def test_a_kill_while_an_old_checkpoint_is_pruned_leaves_no_half_checkpoint(run, new_process, monkeypatch):
    from jsarag.train.checkpoint import remove_interrupted_saves

    def killed_midway(path, ignore_errors=False):  # deletes one file, then the process "dies"
        files = [p for p in Path(path).rglob("*") if p.is_file()]
        if files:
            files[0].unlink()
            raise RuntimeError("killed")

    model, optimizer, scheduler = stand_in_training()
    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_midway)
    with pytest.raises(RuntimeError, match="killed"):  # step 3 saved, step 1 pruned (keep=2) when killed
        save_checkpoint(run, 3, model=model, optimizer=optimizer, scheduler=scheduler, estimator=NoState(),
                        cfg=load_config(TINY), rng_states=[None], keep=2)
    monkeypatch.undo()
    folders = sorted((run / "checkpoints").glob("step_*"))
    assert folders == [step(run, 2), step(run, 3)]
    assert all(checkpoint_problem(folder) is None for folder in folders)
    assert [p.name for p in remove_interrupted_saves(run)] == [".step_0000001.deleting"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_0000002", "step_0000003"]


def test_no_intact_checkpoint_is_one_clear_error(run, new_process):
    truncate(step(run, 2) / "generator" / "model.safetensors")
    flip_byte(step(run, 1) / "optimizer.pt")
    with pytest.raises(CorruptCheckpointError) as err:
        latest_checkpoint(run, report=no_report)
    message = str(err.value)
    assert "no intact checkpoint" in message and "\n" not in message
    assert "step_0000002 is corrupt (generator/model.safetensors" in message
    assert "step_0000001 is corrupt (optimizer.pt" in message


def test_a_checkpoint_without_a_manifest_loads_unverified(run, new_process):
    for n in (1, 2):
        (step(run, n) / MANIFEST).unlink()  # as written before manifests existed
    assert latest_checkpoint(run, report=no_report) == step(run, 2)
    model, optimizer, scheduler = stand_in_training()
    assert load_training_state(step(run, 2), optimizer=optimizer, scheduler=scheduler, estimator=NoState())[0] == 2


def test_an_fp16_loss_scale_resumes_where_it_was(tmp_path):
    """fp16's GradScaler state (scale, growth tracker) is saved and restored: a resumed fp16 run does not
    restart from the initial scale of 65536 and overflow again. Other precisions save no scaler state. (An
    enabled scaler on a CPU, only to test it: the loop refuses fp16 on a CPU.)"""
    model, optimizer, scheduler = stand_in_training()
    cfg = load_config(TINY)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    for overflow in (True, False, False):  # 1024 -> 512 after the overflow, then two good steps of the three
        optimizer.zero_grad()
        scale = torch.tensor([1.0] * 63 + [float("inf") if overflow else 1.0])
        scaler.scale((model.linear(torch.ones(2, 64)) * scale).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
    assert scaler.get_scale() == 512.0 and scaler._get_growth_tracker() == 2
    save_checkpoint(tmp_path / "fp16", 3, model=model, optimizer=optimizer, scheduler=scheduler,
                    estimator=NoState(), cfg=cfg, rng_states=[None], scaler=scaler)
    save_checkpoint(tmp_path / "fp32", 3, model=model, optimizer=optimizer, scheduler=scheduler,
                    estimator=NoState(), cfg=cfg, rng_states=[None], scaler=torch.amp.GradScaler("cpu", enabled=False))
    assert "scaler" not in torch.load(step(tmp_path / "fp32", 3) / "state.pt", weights_only=False)

    resumed = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    load_training_state(step(tmp_path / "fp16", 3), optimizer=optimizer, scheduler=scheduler, estimator=NoState(),
                        scaler=resumed)
    assert resumed.get_scale() == 512.0 and resumed._get_growth_tracker() == 2
    fresh = torch.amp.GradScaler("cpu", init_scale=1024.0)  # fp16 resumed from a checkpoint of another precision
    load_training_state(step(tmp_path / "fp32", 3), optimizer=optimizer, scheduler=scheduler, estimator=NoState(),
                        scaler=fresh)
    assert fresh.get_scale() == 1024.0


def test_choosing_then_loading_a_checkpoint_hashes_each_file_once(run, new_process, monkeypatch):
    hashed = []
    real = checkpoint._sha256
    monkeypatch.setattr(checkpoint, "_sha256", lambda path: (hashed.append(path), real(path))[1])
    chosen = latest_checkpoint(run, report=no_report)
    check_intact(chosen)
    model, optimizer, scheduler = stand_in_training()
    load_training_state(chosen, optimizer=optimizer, scheduler=scheduler, estimator=NoState())
    files = json.loads((chosen / MANIFEST).read_text())["files"]
    assert sorted(hashed) == sorted(chosen / name for name in files)


# ---- the CLI on tiny models ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    out = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out.pop("RANK", None)
    out.pop("WORLD_SIZE", None)
    return out


def train_command(run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jsarag", "train", str(TINY), "--out", str(run), *RUN_ARGS, *extra]


def jsarag(env: dict, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jsarag", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600)


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> float:
    """Seconds until ``path`` exists (polled every 5 ms), or until ``proc`` ends."""
    start = time.perf_counter()
    while not path.exists() and proc.poll() is None:
        if time.perf_counter() - start > timeout:
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory) -> tuple[Path, float]:
    """An uninterrupted run of RUN_ARGS, and its kill window: from its first save's start to its last
    checkpoint's appearance, plus 0.5 s (the ``latest`` file, pruning, the end of the process)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    proc = subprocess.Popen(train_command(run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    wait_for(run / "checkpoints", proc)
    window = wait_for(step(run, STEPS), proc) + 0.5
    err = proc.communicate(timeout=600)[1]
    assert proc.returncode == 0, err
    assert sorted(losses(run)) == list(range(1, STEPS + 1))
    return run, window


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip() and not line.startswith(("evaluating", "\r"))]


@pytest.mark.slow
def test_eval_falls_back_to_the_newest_intact_checkpoint_saying_so(env, reference, tmp_path):
    run = copy_of(reference[0], tmp_path)
    truncate(step(run, STEPS) / "generator" / "model.safetensors")
    result = jsarag(env, "eval", run, "--split", "train", "data.max_eval_examples=2")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in stderr_lines(result) if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert f"step_{STEPS:07d} is corrupt (generator/model.safetensors has" in warnings[0]
    assert f"using step_{STEPS - 1:07d}" in warnings[0]
    assert f"step_{STEPS - 1:07d}" in result.stdout and "Traceback" not in result.stderr


@pytest.mark.slow
def test_resume_falls_back_to_the_newest_intact_checkpoint_and_ends_with_the_same_loss(env, reference, tmp_path):
    run = copy_of(reference[0], tmp_path)
    truncate(step(run, STEPS) / "optimizer.pt")
    result = subprocess.run([*train_command(run), "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in stderr_lines(result) if line.startswith("warning:")]
    assert len(warnings) == 1 and f"step_{STEPS:07d} is corrupt (optimizer.pt has" in warnings[0], result.stderr
    assert f"resuming from {step(run, STEPS - 1)}" in result.stderr
    assert losses(run) == pytest.approx(losses(reference[0]), rel=1e-6)
    assert checkpoint_problem(step(run, STEPS)) is None  # saved again, whole


@pytest.mark.slow
def test_no_intact_checkpoint_stops_eval_and_resume_with_one_line(env, reference, tmp_path):
    run = copy_of(reference[0], tmp_path)
    truncate(step(run, STEPS) / "generator" / "model.safetensors")
    flip_byte(step(run, STEPS - 1) / "generator" / "model.safetensors")
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    for result in (jsarag(env, "eval", run), subprocess.run([*train_command(run), "--resume"], env=env,
                                                            capture_output=True, text=True, timeout=600)):
        lines = stderr_lines(result)
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith("error: no intact checkpoint in") and "differs from its SHA-256" in lines[0]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing was written


@pytest.mark.slow
def test_a_real_checkpoint_without_a_manifest_still_loads(reference, tmp_path, new_process):
    from jsarag.pipeline import build_model

    run = copy_of(reference[0], tmp_path)
    for manifest in run.glob(f"checkpoints/step_*/{MANIFEST}"):
        manifest.unlink()
    newest = latest_checkpoint(run, report=no_report)
    assert newest == step(run, STEPS)
    build_model(load_config(run / "config.yaml"), newest)


# ---- the kill test -------------------------------------------------------------------------------------------
def check_newest_checkpoint_loads(run: Path) -> str:
    """Every checkpoint verifies; the newest one is chosen without a report and its files load."""
    folders = sorted((run / "checkpoints").glob("step_*"))
    for folder in folders:
        assert checkpoint_problem(folder) is None, folder
    if not folders:
        return "none"
    chosen = latest_checkpoint(run, report=no_report)
    assert chosen in folders[-2:], chosen  # `latest` may still name the previous one if killed just before it moved
    for weights in folders[-1].rglob("*.safetensors"):
        load_file(weights)
    for state in folders[-1].glob("*.pt"):
        torch.load(state, weights_only=False)
    return folders[-1].name


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(env, reference, tmp_path):
    ref_run, window = reference
    final_loss = losses(ref_run)[STEPS]
    outcomes = []
    for trial in range(TRIALS):
        u = random.Random(SEED * 1000 + trial).random()
        run = tmp_path / f"trial{trial}"
        proc = subprocess.Popen(train_command(run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(run / "checkpoints", proc)
        time.sleep(u * window)
        temporary = [p.name for p in (run / "checkpoints").glob(".*")] if (run / "checkpoints").is_dir() else []
        proc.send_signal(signal.SIGKILL)
        code = proc.wait()
        where = f"trial {trial} (seed {SEED}, killed {u * window:.2f} s of {window:.2f} s after the first save began)"
        logged = max(losses(run), default=0) if (run / "metrics.jsonl").is_file() else None
        try:
            newest = check_newest_checkpoint_loads(run)
        except AssertionError as err:
            raise AssertionError(f"{where}: {err}") from err
        resumed = subprocess.run([*train_command(run), "--resume"], env=env, capture_output=True, text=True,
                                 timeout=600)
        assert resumed.returncode == 0, f"{where}: {resumed.stderr}"
        assert losses(run)[STEPS] == pytest.approx(final_loss, rel=1e-6), where
        assert sorted(p.name for p in run.rglob(".*")) == [RUN_LOCK], where  # no temporary folder remains
        outcomes.append(f"{where}: exit {code}, last logged step {logged}, newest checkpoint {newest}"
                        f"{', saving ' + ', '.join(temporary) if temporary else ''}; resumed to loss {final_loss:.6g}")
    print("\n" + "\n".join(outcomes))
