"""Adding an estimator is one class and one registry entry.

``ReaderOnly`` below is written as a new file under ``src/jsarag/estimators/`` would be; the ``reader_only``
fixture adds its entry to ``ESTIMATORS`` for one test (undone after it). Nothing else changes, yet the config
takes its section, the study its methods, and ``jsarag compare`` (index, training with ``jsarag train``,
evaluation, variance, report, plots) and ``jsarag plot`` run it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import yaml
from helpers import REPO, jsarag, jsarag_logged

from jsarag.config import Config, load_config, save_config
from jsarag.configtools import ConfigError, at_least, check_ranges
from jsarag.data import Batch
from jsarag.estimators import ESTIMATORS, Panel, build_estimator
from jsarag.estimators.base import Stateless
from jsarag.study.methods import Method, choose_methods, registered_methods

TINY = REPO / "configs" / "tiny.yaml"


# ---- the new estimator, as its own file would hold it ---------------------------------------------
@dataclass
class ReaderOnlyConfig:
    passages: int = 1  # the prior's top passages the generator reads, one at a time

    def validate(self) -> None:
        check_ranges(self, passages=at_least(1))


def reader_nll(seq_loglik: torch.Tensor) -> torch.Tensor:
    """-mean_k log p_g(y|x,h_k): [B, K] -> [B]."""
    return -seq_loglik.mean(-1)


class ReaderOnly(Stateless):
    """The generator alone, trained on the fixed prior's top passages; the retrievers stay as loaded."""
    name = "reader_only"
    options = ReaderOnlyConfig
    methods = {"reader_only": {}, "reader_only_top2": {"passages": 2}}
    panels = (Panel("reader", "The reader", {"reader_loglik": "log p_g(y|x,h) over the passages read"},
                    compared=("reader_loglik",)),)
    trains = frozenset({"generator"})
    deterministic = True

    def __init__(self, cfg: ReaderOnlyConfig | None = None, top_k: int = 10):
        self.cfg = cfg or ReaderOnlyConfig()
        self.top_k = top_k

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        retriever = model.retriever
        # 1. The prior's top passages, without gradient: the retriever does not train.
        with torch.no_grad():
            rows = retriever.search(retriever.prior_vectors(batch.queries), self.cfg.passages)  # [B, K]
        # 2. The answer's log-likelihood under each of them, with gradient.
        seq_loglik = model.generator.sequence_logprob(batch.queries, batch.kind, retriever.passages(rows),
                                                      batch.answers)                          # [B, K]
        loss = reader_nll(seq_loglik).mean()
        return loss, {"loss": loss.item(), "reader_loglik": seq_loglik.detach().mean().item()}


@pytest.fixture
def reader_only(monkeypatch):
    """The one registry entry, for this test only."""
    monkeypatch.setitem(ESTIMATORS, ReaderOnly.name, ReaderOnly)
    return ReaderOnly


# ---- config and study -----------------------------------------------------------------------------
def test_the_config_takes_the_new_section_typed_and_validated(reader_only, tmp_path):
    cfg = load_config(TINY, ["estimator.name=reader_only", "estimator.reader_only.passages=2"])
    assert cfg.estimator.options() == ReaderOnlyConfig(passages=2)
    assert isinstance(build_estimator(cfg.estimator), ReaderOnly)
    assert cfg.estimator.jsa.num_proposals == 8  # the other sections as before
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    assert yaml.safe_load(path.read_text())["estimator"]["reader_only"] == {"passages": 2}
    assert load_config(path) == cfg
    path.write_text("estimator: {name: reader_only, top_k: 4, reader_only: {passages: 3}}\n")
    assert load_config(path).estimator.reader_only.passages == 3
    for override, message in [
        ("estimator.reader_only.passages=0", "estimator.reader_only.passages=0 is out of range (valid: at least 1)"),
        ("estimator.reader_only.passages=two", "estimator.reader_only.passages: expected an integer, got 'two'"),
        ("estimator.reader_only.pages=1", "unknown config key 'estimator.reader_only.pages' (known at this level: "
                                          "passages)"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(TINY, [override])


def test_the_study_takes_the_new_methods(reader_only):
    methods = registered_methods()
    assert methods["reader_only_top2"] == Method("reader_only", {"passages": 2})
    assert methods["reader_only_top2"].overrides() == ["estimator.name=reader_only",
                                                       "estimator.reader_only.passages=2"]
    assert choose_methods(None)[-2:] == ["reader_only", "reader_only_top2"]


def test_the_entry_is_gone_after_the_test(monkeypatch):
    with monkeypatch.context() as patch:
        patch.setitem(ESTIMATORS, ReaderOnly.name, ReaderOnly)
        assert load_config(None, ["estimator.name=reader_only"]).estimator.name == "reader_only"
    registered = ", ".join(ESTIMATORS)  # the in-tree estimators, in registry order, and no other
    assert "reader_only" not in registered
    with pytest.raises(ConfigError, match=f"estimator.name: expected one of {registered}, got 'reader_only'"):
        load_config(None, ["estimator.name=reader_only"])
    assert "reader_only" not in choose_methods(None)
    assert load_config(None) == Config()  # the default config's class is the registry's again


# ---- the command line -----------------------------------------------------------------------------
@pytest.mark.slow
def test_compare_trains_evaluates_and_reports_the_new_estimator(reader_only, tmp_path, monkeypatch):
    from jsarag.study import compare
    from jsarag.train.logger import read_metrics

    monkeypatch.setattr(compare, "_jsarag", jsarag_logged)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    study, results = tmp_path / "study", tmp_path / "results"
    jsarag("compare", TINY, "--name", "tiny", "--out", study, "--seeds", "0", "--methods", "reader_only_top2",
           "--variance-draws", "2", "--signal-examples", "0", "--report-dir", results,
           "train.steps=2", "train.save_every=2", "data.max_train_examples=8", "data.max_eval_examples=2")

    assert "$ jsarag train" in (study / "study.log").read_text()
    run_dir = study / "seed0" / "reader_only_top2"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["estimator"]
    assert saved["name"] == "reader_only" and saved["reader_only"] == {"passages": 2}
    steps = [r for r in read_metrics(run_dir) if "loss" in r]
    assert len(steps) == 2 and all(math.isfinite(r["reader_loglik"]) for r in steps)
    report = (results / "tiny.md").read_text()
    for needle in ("| reader_only_top2 | 1 |", "| frozen_retriever | 1 |", "reader_only_top2 minus",
                   "--methods reader_only_top2 --reference reader_only_top2",
                   "  - `reader_only_top2`: `reader_only`, passages 2",
                   "| reader_only_top2 | 0 (deterministic) | 0 (deterministic) | 0 (deterministic) |",
                   "None of these methods trains the posterior.",
                   "## The reader during training", "| method | reader_loglik |",
                   "`reader_loglik`: log p_g(y|x,h) over the passages read",
                   "![reader_loglik](tiny/reader_loglik.png)"):
        assert needle in report, needle
    assert (results / "tiny" / "reader_loglik.png").is_file()

    jsarag("plot", run_dir)
    assert {"losses.png", "reader.png", "grad_norms.png"} <= {p.name for p in (run_dir / "plots").iterdir()}
