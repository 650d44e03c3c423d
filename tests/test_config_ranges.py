"""Numeric and enumerated config fields are checked against their valid range when the config loads, and
those that depend on the data (top-K against the corpus, the batch against the training examples and the
processes) before anything is written: one line naming the field, the value and the range (issue 16)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jsarag.config import load_config
from jsarag.configtools import ConfigError

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
SHIPPED = sorted([*(REPO / "configs").rglob("*.yaml"), *(REPO / "src" / "jsarag" / "resources").rglob("*.yaml")])
SQUAD_MINI_PASSAGES = 185


def refused(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(TINY, overrides)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    return message


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_loads(path):
    load_config(path)


# The failures named in the issue, then one value out of range for every other checked field.
@pytest.mark.parametrize("override, message", [
    ("optim.lr_generator=-1e-3", "optim.lr_generator=-0.001 is out of range (valid: at least 0)"),
    ("train.steps=-1", "train.steps=-1 is out of range (valid: at least 1)"),
    ("train.batch_size=0", "train.batch_size=0 is out of range (valid: at least 1)"),
    ("estimator.top_k=0", "estimator.top_k=0 is out of range (valid: at least 1)"),
    ("eval.top_k=0", "eval.top_k=0 is out of range (valid: at least 1)"),
    ("optim.lr_prior=nan", "optim.lr_prior=nan is out of range (valid: at least 0)"),
    ("optim.lr_posterior=inf", "optim.lr_posterior=inf is out of range (valid: at least 0)"),
    ("optim.lr_passage=-1", "optim.lr_passage=-1.0 is out of range (valid: at least 0)"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1 is out of range (valid: at least 0)"),
    ("optim.betas=[0.9,1.0]", "optim.betas[1]=1.0 is out of range (valid: in [0, 1))"),
    ("optim.betas=[-0.1,0.9]", "optim.betas[0]=-0.1 is out of range (valid: in [0, 1))"),
    ("optim.warmup_steps=-1", "optim.warmup_steps=-1 is out of range (valid: at least 0)"),
    ("optim.min_lr_ratio=1.5", "optim.min_lr_ratio=1.5 is out of range (valid: in [0, 1])"),
    ("optim.max_grad_norm=0", "optim.max_grad_norm=0.0 is out of range (valid: greater than 0 (or inf))"),
    ("train.grad_accum_steps=0", "train.grad_accum_steps=0 is out of range (valid: at least 1)"),
    ("train.seed=-1", "train.seed=-1 is out of range (valid: in [0, 18446744073709551615])"),
    ("train.log_every=0", "train.log_every=0 is out of range (valid: at least 1)"),
    ("train.save_every=0", "train.save_every=0 is out of range (valid: at least 1)"),
    ("train.eval_every=-1", "train.eval_every=-1 is out of range (valid: at least 0)"),
    ("train.keep_checkpoints=-1", "train.keep_checkpoints=-1 is out of range (valid: at least 0)"),
    ("train.max_nonfinite_steps=0", "train.max_nonfinite_steps=0 is out of range (valid: at least 1)"),
    ("data.max_train_examples=0", "data.max_train_examples=0 is out of range (valid: at least 1)"),
    ("data.max_eval_examples=-3", "data.max_eval_examples=-3 is out of range (valid: at least 1)"),
    ("retriever.temperature=0", "retriever.temperature=0.0 is out of range (valid: greater than 0)"),
    ("retriever.max_query_length=0", "retriever.max_query_length=0 is out of range (valid: at least 1)"),
    ("retriever.max_passage_length=0", "retriever.max_passage_length=0 is out of range (valid: at least 1)"),
    ("generator.lora.r=0", "generator.lora.r=0 is out of range (valid: at least 1)"),
    ("generator.lora.alpha=0", "generator.lora.alpha=0 is out of range (valid: at least 1)"),
    ("generator.lora.dropout=1", "generator.lora.dropout=1.0 is out of range (valid: in [0, 1))"),
    ("generator.max_passage_tokens=0", "generator.max_passage_tokens=0 is out of range (valid: at least 1)"),
    ("generator.max_query_tokens=0", "generator.max_query_tokens=0 is out of range (valid: at least 1)"),
    ("generator.max_answer_tokens=0", "generator.max_answer_tokens=0 is out of range (valid: at least 1)"),
    ("generator.score_batch_size=0", "generator.score_batch_size=0 is out of range (valid: at least 1)"),
    ("index.batch_size=0", "index.batch_size=0 is out of range (valid: at least 1)"),
    ("index.refresh_every=-1", "index.refresh_every=-1 is out of range (valid: at least 0)"),
    ("estimator.jsa.num_proposals=0", "estimator.jsa.num_proposals=0 is out of range (valid: at least 1)"),
    ("estimator.vrag.num_samples=0", "estimator.vrag.num_samples=0 is out of range (valid: at least 1)"),
    ("eval.num_beams=0", "eval.num_beams=0 is out of range (valid: at least 1)"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens=0 is out of range (valid: at least 1)"),
    ("eval.batch_size=0", "eval.batch_size=0 is out of range (valid: at least 1)"),
    ("eval.retrieval_ks=[1,0]", "eval.retrieval_ks[1]=0 is out of range (valid: at least 1)"),
    ("eval.retrieval_ks=[]", "eval.retrieval_ks=[] is out of range (valid: a non-empty list of cutoffs, "
                             "e.g. [1, 5, 10])"),
])
def test_out_of_range_field(override, message):
    assert refused([override]) == message


@pytest.mark.parametrize("overrides, message", [
    (["train.batch_size=6", "train.grad_accum_steps=4"],
     "train.batch_size=6 is out of range (valid: a multiple of grad_accum_steps=4)"),
    (["estimator.vrag.mode=sampled", "estimator.vrag.num_samples=1"],
     "estimator.vrag.num_samples=1 is out of range (valid: at least 2 for the leave-one-out baseline)"),
])
def test_range_that_depends_on_another_field(overrides, message):
    assert refused(overrides) == message


def test_limits_that_mean_no_limit_are_accepted():
    cfg = load_config(TINY, ["optim.max_grad_norm=inf", "train.keep_checkpoints=0", "train.eval_every=0",
                             "optim.lr_prior=0", "optim.min_lr_ratio=1", "train.seed=0"])
    assert cfg.optim.max_grad_norm == float("inf") and cfg.train.keep_checkpoints == 0


# --- ranges that depend on the data or the processes: refused before anything is written -------------


@pytest.mark.parametrize("overrides, message", [
    (["estimator.top_k=500"],
     f"estimator.top_k=500 is out of range for a corpus of {SQUAD_MINI_PASSAGES} passages "
     f"(valid: in [1, {SQUAD_MINI_PASSAGES}])"),
    (["eval.retrieval_ks=[1,200]"],
     f"eval.retrieval_ks[1]=200 is out of range for a corpus of {SQUAD_MINI_PASSAGES} passages "
     f"(valid: in [1, {SQUAD_MINI_PASSAGES}])"),
    (["train.batch_size=128"],  # tiny.yaml keeps 64 training examples
     "train.batch_size=128 is out of range for 64 training examples on 1 process(es) (valid: at most 64)"),
])
def test_train_refuses_data_dependent_ranges(tmp_path, overrides, message):
    from jsarag.train.loop import train

    out = tmp_path / "run"
    with pytest.raises(ConfigError) as info:
        train(load_config(TINY, overrides), out, device="cpu")
    assert str(info.value) == message
    assert not out.exists()


def test_eval_and_ask_refuse_a_top_k_larger_than_the_corpus(tmp_path):
    from jsarag.pipeline import load_run

    with pytest.raises(ConfigError) as info:
        load_run(TINY, ["eval.top_k=186"], build_dir=tmp_path / "index")
    assert str(info.value) == (f"eval.top_k=186 is out of range for a corpus of {SQUAD_MINI_PASSAGES} passages "
                               f"(valid: in [1, {SQUAD_MINI_PASSAGES}])")
    assert not (tmp_path / "index").exists()


def test_batch_size_against_processes_and_accumulation():
    from jsarag.pipeline import check_batch_size

    cfg = load_config(TINY, ["train.batch_size=6", "train.grad_accum_steps=3"])
    check_batch_size(cfg, 2)
    with pytest.raises(ConfigError) as info:
        check_batch_size(cfg, 4)
    assert str(info.value) == ("train.batch_size=6 is out of range for 4 process(es) x train.grad_accum_steps=3 "
                               "(valid: a multiple of 12)")


# --- through the command line: exit 2, one line, no folder -------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("optim.lr_generator=-1e-3", "error: optim.lr_generator=-0.001 is out of range (valid: at least 0)"),
    ("estimator.top_k=500", f"error: estimator.top_k=500 is out of range for a corpus of {SQUAD_MINI_PASSAGES} "
                            f"passages (valid: in [1, {SQUAD_MINI_PASSAGES}])"),
])
def test_cli_train_refuses_out_of_range_values(tmp_path, override, message):
    out = tmp_path / "run"
    env = {**os.environ, "JSARAG_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "jsarag", "train", str(TINY), "--out", str(out), override],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == message
    assert not out.exists()
