"""Exact resume after SIGKILL, and 2-process DDP on CPU (gloo), through the real CLI."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


def env() -> dict:
    e = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return e


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def jsarag(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jsarag", *args], env=env(), capture_output=True, text=True,
                          timeout=600)


# JSA with the chain cache (estimator state) and LoRA-free tiny models; 12 steps, checkpoint every 3.
RESUME_ARGS = ["train.steps=12", "train.save_every=3", "estimator.jsa.chain_cache=true", "data.dev=null",
               "train.keep_checkpoints=5"]


def test_sigkill_then_resume_logs_the_same_losses_as_an_uninterrupted_run(tmp_path):
    whole = tmp_path / "whole"
    done = jsarag("train", TINY, "--out", str(whole), *RESUME_ARGS)
    assert done.returncode == 0, done.stderr
    reference = losses(whole)
    assert sorted(reference) == list(range(1, 13))

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "jsarag", "train", TINY, "--out", str(killed), *RESUME_ARGS],
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once step 7 is logged: checkpoint 6 exists, step 7 is not saved
        if (killed / "metrics.jsonl").exists() and max(losses(killed) or {0: 0}) >= 7:
            break
        if proc.poll() is not None:
            pytest.fail("the run ended before it could be killed")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(losses(killed)) < 12, "killed too late to test anything"

    resumed = jsarag("train", TINY, "--out", str(killed), "--resume", *RESUME_ARGS)
    assert resumed.returncode == 0, resumed.stderr
    after = losses(killed)
    assert sorted(after) == list(range(1, 13))  # lines logged after the last checkpoint were replaced
    for step in range(1, 13):
        # CPU, same seed, same threads: bit-for-bit identical in practice; 1e-6 relative leaves room
        # for nothing but summation-order noise.
        assert after[step] == pytest.approx(reference[step], rel=1e-6), step


def test_resume_refuses_a_changed_model_config(tmp_path):
    run = tmp_path / "run"
    assert jsarag("train", TINY, "--out", str(run), "train.steps=2", "data.dev=null").returncode == 0
    result = jsarag("train", TINY, "--out", str(run), "--resume", "train.steps=4", "optim.lr_prior=0.5")
    assert result.returncode == 2
    assert "optim.lr_prior" in result.stderr
    ok = jsarag("train", TINY, "--out", str(run), "--resume", "train.steps=4", "data.dev=null")
    assert ok.returncode == 0, ok.stderr
    assert sorted(losses(run)) == [1, 2, 3, 4]


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    """rag_sequence is deterministic and the tiny models have no dropout, so the two runs compute the
    same thing; the 2-process loss is the mean of two half-batch means. Tolerance 1e-4 relative:
    float32 sums over a different split of the batch, compounded over 4 optimiser steps."""
    common = ["estimator.name=rag_sequence", "train.steps=4", "train.batch_size=4", "train.save_every=2",
              "data.dev=null"]
    single = tmp_path / "single"
    one = jsarag("train", TINY, "--out", str(single), *common)
    assert one.returncode == 0, one.stderr
    double = tmp_path / "double"
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29531", "-m", "jsarag", "train", TINY, "--out", str(double), *common],
                         env=env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = losses(single), losses(double)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert math.isfinite(b[step])
        assert b[step] == pytest.approx(a[step], rel=1e-4), step
    records = [json.loads(line) for line in (double / "metrics.jsonl").read_text().splitlines()]
    spreads = [r["dist/param_spread"] for r in records if "dist/param_spread" in r]
    assert spreads and all(s == 0.0 for s in spreads)  # replicas identical after every checkpointed step


def test_two_process_jsa_chain_caches_stay_complete(tmp_path):
    """Each process runs the chains of its half of the batch; the caches are exchanged every step,
    so the checkpoint (written by rank 0) holds a state for every example either process saw."""
    import torch

    from jsarag.config import load_config
    from jsarag.pipeline import load_corpus, load_split
    from jsarag.train.loop import BatchSchedule

    args = ["estimator.jsa.chain_cache=true", "train.steps=3", "train.batch_size=4", "train.save_every=3",
            "data.dev=null"]
    run = tmp_path / "ddp-jsa"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29533", "-m", "jsarag", "train", TINY, "--out", str(run), *args],
                          env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = load_config(TINY, args)
    examples = load_split(cfg.data, "train", load_corpus(cfg.data), cfg.data.max_train_examples)
    schedule = BatchSchedule(len(examples), 4, cfg.train.seed)
    seen = {examples[i].id for step in range(3) for i in schedule.global_batch(step)}
    state = torch.load(run / "checkpoints" / "step_0000003" / "state.pt", weights_only=False)
    assert set(state["estimator"]["cache"]) == seen


def test_two_process_training_on_a_sharded_index_logs_the_losses_of_an_unsharded_one(tmp_path):
    """index.sharded=true: each process holds half of the Flat index and every search is collective
    (prior and posterior searches of JSA, and the evaluation, which every process then runs). The same
    top-K as the whole index means the same losses."""
    common = ["train.steps=3", "train.batch_size=4", "train.save_every=3", "data.max_eval_examples=4"]
    runs = {}
    for name, port, extra in (("whole", "29535", []), ("sharded", "29537", ["index.sharded=true"])):
        runs[name] = tmp_path / name
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_port", port, "-m", "jsarag", "train", TINY, "--out", str(runs[name]),
                               *common, *extra], env=env(), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    a, b = losses(runs["whole"]), losses(runs["sharded"])
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=0, abs=1e-5), step
    assert not (runs["sharded"] / "index" / "index.faiss").exists()  # no process held the whole index
    assert (runs["sharded"] / "index" / "trained.faiss").is_file()
    evals = [json.loads(line) for line in (runs["sharded"] / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/f1" in r for r in evals) and (runs["sharded"] / "eval" / "dev").is_dir()
    assert evals[0]["run"]["processes"] == 2 and evals[0]["run"]["backend"] == "gloo"  # the header names the group
