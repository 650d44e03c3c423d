"""The comparison study's statistics and the gradient-variance diagnostic."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from helpers import REPO, jsarag

from jsarag.study.compare import (
    SIGNAL_METRICS,
    RunResult,
    paired_bootstrap,
    panel_sections,
    panel_tables,
    results_table,
    settings_text,
    signal_section,
    significance_rows,
    step_seconds,
    step_spread,
)
from jsarag.study.variance import RunningVariance, format_variance


def run(method: str, seed: int, em: dict[str, float]) -> RunResult:
    values = {"em": em, "f1": em, "recall@1": em}
    summary = {"em": 100 * sum(em.values()) / len(em), "f1": 50.0, "recall@1": 0.5}
    return RunResult(method, seed, summary, values, seconds_per_100_steps=10.0 * (seed + 1), peak_memory_mib=100.0)


def test_paired_bootstrap_mean_interval_and_wins():
    # Two seeds, four questions. Per-question differences (a - b): seed 0: [1, 0, 0, 0],
    # seed 1: [1, 1, 0, 0]; averaged over seeds: [1, 0.5, 0, 0] -> mean 0.375.
    a = [run("a", 0, {"q1": 1, "q2": 0, "q3": 1, "q4": 0}), run("a", 1, {"q1": 1, "q2": 1, "q3": 1, "q4": 0})]
    b = [run("b", 0, {"q1": 0, "q2": 0, "q3": 1, "q4": 0}), run("b", 1, {"q1": 0, "q2": 0, "q3": 1, "q4": 0})]
    mean, low, high, wins = paired_bootstrap(a, b, "em", samples=4000)
    assert mean == pytest.approx(0.375)
    assert wins == 2  # a ahead in both seeds
    # The resampled mean of [1, 0.5, 0, 0] ranges over [0, 1]; its 95% interval must contain the mean.
    assert 0.0 <= low <= mean <= high <= 1.0


def test_identical_methods_are_not_called_different():
    a = [run("a", s, {f"q{i}": float(i % 2) for i in range(50)}) for s in range(3)]
    b = [run("b", s, {f"q{i}": float(i % 2) for i in range(50)}) for s in range(3)]
    mean, low, high, wins = paired_bootstrap(a, b, "em")
    assert (mean, low, high, wins) == (0.0, 0.0, 0.0, 0)
    rows = significance_rows(a + b, "a")
    assert "beyond noise" not in "\n".join(rows)


def test_a_consistent_large_gap_is_beyond_noise():
    a = [run("jsa_sum", s, {f"q{i}": 1.0 for i in range(40)}) for s in range(3)]
    b = [run("rag_sequence", s, {f"q{i}": float(i < 10) for i in range(40)}) for s in range(3)]
    rows = significance_rows(a + b, "jsa_sum")
    assert "+75.0" in rows[2] and "beyond noise" in rows[2]


def test_results_table_reports_mean_and_std_over_seeds():
    runs = [run("m", 0, {"q": 1.0}), run("m", 1, {"q": 0.0})]
    table = "\n".join(results_table(runs))
    assert "| m | 2 | 50.00 ± 70.71 |" in table  # EM 100 and 0: mean 50, sample std 70.71
    assert "15.00 ± 7.07" in table  # seconds per 100 steps 10 and 20


def test_a_run_slowed_for_half_its_steps_is_flagged_and_a_steady_one_is_not():
    def records(seconds: list[float]) -> list[dict]:  # as metrics.jsonl has them: header, steps, evaluation
        return [{"step": 0, "run": {"precision": "fp32"}},
                *({"step": i + 1, "loss": 1.0, "seconds": s} for i, s in enumerate(seconds)),
                {"step": len(seconds), "eval/em": 0.0}]

    # Step 1 (warm-up, 9 s) is left out. Steady: 1.0 s and 1.1 s alternating, deciles 1.0 and 1.1, median 1.05.
    steady = step_seconds(records([9.0] + [1.0, 1.1] * 10))
    assert steady == [1.0, 1.1] * 10 and step_spread(steady) == pytest.approx(0.1 / 1.05)
    # Another process slows the second half to 2 s: deciles 1.0 and 2.0, median 1.5 -> 67%.
    slowed = step_seconds(records([9.0] + [1.0] * 10 + [2.0] * 10))
    assert step_spread(slowed) == pytest.approx(1 / 1.5)
    # One slow step in twenty is not a stretch: p90 stays at 1.0.
    assert step_spread([1.0] * 19 + [5.0]) == pytest.approx(0.0)
    runs = []
    for seed, seconds in enumerate((steady, slowed)):
        runs.append(run("m", seed, {"q": 1.0}))
        runs[-1].median_seconds_per_100_steps = 100 * statistics.median(seconds)
        runs[-1].step_spread = step_spread(seconds)
    table = "\n".join(results_table(runs))
    assert "median s / 100 steps | uneven steps |" in table
    assert "| 127.50 ± 31.82 | seed 1 (67%) |" in table  # medians 105 and 150; only the slowed run flagged


def test_settings_name_the_precision_the_runs_resolved_not_the_setting():
    from jsarag.config import load_config

    cfg = load_config(REPO / "configs" / "tiny.yaml", ["train.precision=auto"])
    trained = run("m", 0, {"q": 1.0})
    trained.headers = [{"precision": "bf16", "precision_setting": "auto", "device": "cpu",
                        "cpu": "AVX512 kernels, native bf16"}]
    untrained = run("untrained", -1, {"q": 0.0})  # no training log, no header
    text = settings_text(cfg, config="tiny.yaml", overrides=[], results=[untrained, trained])
    assert "precision bf16 (train.precision auto; CPU AVX512 kernels, native bf16)." in text
    assert "precision auto." in settings_text(cfg, config="tiny.yaml", overrides=[])  # no logs yet


def test_settings_list_each_methods_estimator_options_as_resolved():
    from jsarag.config import load_config

    tiny = REPO / "configs" / "tiny.yaml"
    runs = [run(m, 0, {"q": 1.0}) for m in ("untrained", "vrag_sampled", "jsa_mean", "frozen_retriever")]
    text = settings_text(load_config(tiny), config=tiny, overrides=[], results=runs)
    assert ("- K = 3; each method's estimator and its options:\n"
            "  - `vrag_sampled`: `vrag`, mode sampled, candidates posterior, num_samples 4, baseline leave_one_out\n"
            "  - `jsa_mean`: `jsa`, num_proposals 8, reduction mean, chain_cache False, candidates union, "
            "scoring auto\n"
            "  - `frozen_retriever`: `rag_sequence`, no options; `train.freeze=[prior]`\n") in text


def test_panel_tables_average_steps_then_seeds_for_the_methods_of_the_panels_estimator():
    def curve(accept: list[float], states: float) -> list[dict]:
        return [{"step": i + 1, "loss": 1.0, "accept_rate": a, "distinct_states": states,
                 "distinct_proposals": 4.0, "candidates": 6.0} for i, a in enumerate(accept)]

    jsa = [run("jsa_sum", 0, {"q": 1.0}), run("jsa_sum", 1, {"q": 1.0})]
    jsa[0].curves = curve([0.2, 0.4], 2.0)  # step means: accept 0.3, states 2
    jsa[1].curves = curve([0.5, 0.7], 4.0)  # accept 0.6, states 4
    vrag = run("vrag_exact", 0, {"q": 1.0})
    vrag.curves = [{"step": 1, "loss": 1.0, "kl": 0.5, "candidates": 3.0}]  # VRAG logs `candidates` too
    rag = run("rag_sequence", 0, {"q": 1.0})
    rag.curves = [{"step": 1, "loss": 1.0}]
    tables = {panel.title: "\n".join(rows) for panel, rows in panel_tables([*jsa, vrag, rag])}
    # JSA's losses were not logged here: no table. VRAG's panel has one metric of two logged.
    assert list(tables) == ["VRAG's ELBO terms", "JSA's sampler"]
    assert "| vrag_exact | 0.50 | - |" in tables["VRAG's ELBO terms"]
    # Over seeds: accept mean 0.45, sample std 0.21; states mean 3, std 1.41; the others constant.
    assert "| jsa_sum | 0.45 ± 0.21 | 3.00 ± 1.41 | 4.00 ± 0.00 | 6.00 ± 0.00 |" in tables["JSA's sampler"]
    assert "vrag_exact" not in tables["JSA's sampler"] and "rag_sequence" not in "".join(tables.values())
    assert panel_tables([rag]) == []


def test_estimators_sharing_a_panel_share_its_table_and_every_heading_is_unique():
    """EMDR2 and PDist log the same retriever and generator terms (one panel, one table); LSR's panel has the same
    title but other metrics, so both headings name their methods."""
    def logged(method: str, values: dict) -> RunResult:
        result = run(method, 0, {"q": 1.0})
        result.curves = [{"step": 1, "loss": 1.0, **values}]
        return result

    results = [logged("emdr2", {"retriever_loss": 2.0, "generator_loss": 3.0}),
               logged("pdist", {"retriever_loss": 0.5, "generator_loss": 4.0}),
               logged("lsr", {"retriever_loss": 1.25})]
    tables = panel_tables(results)
    assert [[row.split(" | ")[0] for row in rows[2:]] for _, rows in tables] == [["| emdr2", "| pdist"], ["| lsr"]]
    assert "| pdist | 0.50 | 4.00 |" in tables[0][1]
    headings = [line for line in panel_sections(results) if line.startswith("## ")]
    assert headings == ["## Retriever and generator terms during training (emdr2, pdist)",
                        "## Retriever and generator terms during training (lsr)"]


def test_the_learning_signal_table_averages_each_methods_seeds_over_the_runs_that_have_one():
    runs = [run("untrained", -1, {"q": 0.0}), run("jsa_sum", 0, {"q": 1.0}), run("jsa_sum", 1, {"q": 1.0}),
            run("rag_sequence", 0, {"q": 1.0})]
    for r, value in zip(runs[:3], (0.1, 0.2, 0.4)):
        r.signal = {"examples": 60.0, **dict.fromkeys(SIGNAL_METRICS, value)}
    text = "\n".join(signal_section(runs))  # rag_sequence's result was collected with --signal-examples 0
    assert "| untrained | 1 | 10.00 | 10.00 |" in text
    assert "| jsa_sum | 2 | 30.00 ± 14.14 | 30.00 ± 14.14 |" in text  # 20 and 40: mean 30, sample std 14.14
    assert "rag_sequence" not in text and "On the first 60 training questions with a gold passage" in text
    assert "Not among these results" in "\n".join(signal_section(runs[3:]))


def test_running_variance_matches_torch():
    torch.manual_seed(0)
    draws = torch.randn(30, 7, dtype=torch.float64) * torch.arange(1, 8)
    stats = RunningVariance()
    for row in draws:
        stats.add(row)
    assert stats.log_total_variance() == pytest.approx(math.log(draws.var(0).sum().item()), rel=1e-10)
    constant = RunningVariance()
    for _ in range(3):
        constant.add(torch.ones(4))
    assert constant.log_total_variance() == float("-inf")
    broken = RunningVariance()
    for x in (torch.ones(4), torch.full((4,), math.nan)):
        broken.add(x)
    assert math.isnan(broken.log_total_variance())  # not "not sampled"


def test_variance_table_says_deterministic_instead_of_printing_noise():
    rows = format_variance({"rag_sequence": dict.fromkeys(("prior", "posterior", "generator"), "deterministic"),
                            "jsa_sum": {"prior": 1.234, "posterior": -2.0, "generator": "not sampled"},
                            "vrag_sampled": {"prior": float("-inf"), "posterior": None, "generator": 0.5}})
    assert rows[2] == "| rag_sequence | 0 (deterministic) | 0 (deterministic) | 0 (deterministic) |"
    assert rows[3] == "| jsa_sum | 1.23 | -2.00 | 0 (not sampled) |"
    # -inf: a table cached before "not sampled"; None: a gradient that was not finite, saved as null
    assert rows[4] == "| vrag_sampled | 0 (not sampled) | not finite | 0.50 |"


@pytest.mark.slow
def test_variance_command_on_tiny_models(tmp_path):
    from jsarag.study.variance import gradient_variance

    methods = ["rag_sequence", "jsa_sum", "vrag_sampled"]
    out = gradient_variance(str(REPO / "configs" / "tiny.yaml"), [], methods, draws=4,
                            batch_size=2, progress=False)
    assert out["rag_sequence"]["prior"] == "deterministic"
    for method in ("jsa_sum", "vrag_sampled"):
        for part in ("prior", "posterior", "generator"):
            assert out[method][part] == "not sampled" or math.isfinite(out[method][part])
    json.dumps(out, allow_nan=False)  # what variance.json is written from: strict JSON
    # Redrawing JSA's proposals and uniforms changes its gradient: its variance is not zero.
    assert math.isfinite(out["jsa_sum"]["generator"])


@pytest.mark.slow
def test_compare_command_end_to_end_on_tiny_models(tmp_path, capsys):
    """Two methods and the baselines, one seed: runs, result files, a report with every section, plots.
    --drop-checkpoints deletes the trained runs' checkpoints once their files are written; a rerun then reads those
    runs from their files (never measuring them again on the untrained weights), and a dropped run without its file
    is an error. With the run folders gone, the result files alone rebuild the same page, and a rerun trains
    nothing."""
    import os
    import shutil
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    study, results = tmp_path / "study", tmp_path / "results"
    args = [sys.executable, "-m", "jsarag", "compare", str(REPO / "configs" / "tiny.yaml"), "--name", "tiny",
            "--out", str(study), "--seeds", "0", "--methods", "rag_sequence,jsa_sum", "--variance-draws", "3",
            "--signal-examples", "4", "--report-dir", str(results), "data.max_eval_examples=4"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (results / "tiny.md").read_text()
    for needle in ("| untrained |", "| rag_sequence | 1 |", "| jsa_sum | 1 |", "| frozen_retriever | 1 |",
                   "jsa_sum minus", "0 (deterministic)", "jsarag compare", "![learning_curves]",
                   "## Learning signal", "| untrained | 1 | ", "## JSA's sampler during training", "- K = ", "steps of",
                   "result file in `tiny/runs/`"):
        assert needle in report, needle
    assert (results / "tiny" / "accept_rate.png").is_file()  # JSA's panel names it for comparison
    runs = results / "tiny" / "runs"
    assert sorted(p.relative_to(runs).as_posix() for p in runs.rglob("*") if p.is_file()) == [
        "seed0/frozen_retriever.json", "seed0/jsa_sum.json", "seed0/rag_sequence.json", "untrained.json"]
    assert (results / "tiny" / "variance.json").is_file()

    trained = sorted((runs / "seed0").glob("*.json"))
    assert {c.parent.parent.name for c in study.glob("seed0/*/checkpoints/step_*")} == {p.stem for p in trained}
    jsarag(*args[3:], "--drop-checkpoints")  # collected again (the same page), then their checkpoints deleted
    assert (results / "tiny.md").read_text() == report
    assert list(study.glob("seed0/*/checkpoints")) == [] and (study / "untrained" / "eval").is_dir()
    assert all((study / "seed0" / p.stem / "eval" / "dev" / "summary.json").is_file() for p in trained)
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in trained}
    jsarag(*args[3:])
    assert (results / "tiny.md").read_text() == report
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in trained} == files  # read, not collected again
    (runs / "seed0" / "jsa_sum.json").unlink()
    from jsarag.cli import app

    code = app(args=[str(a) for a in args[3:]], standalone_mode=False)
    assert code == 2
    assert "seed0/jsa_sum finished training but holds no checkpoint" in capsys.readouterr().err
    (runs / "seed0" / "jsa_sum.json").write_bytes(files[runs / "seed0" / "jsa_sum.json"][0])

    shutil.rmtree(study)  # e.g. the runs were another machine's
    jsarag(*args[3:], "--from-results")  # in this process: it loads no model, so it takes a second
    assert (results / "tiny.md").read_text() == report
    # Without --from-results as well: every run has a result file, so nothing is trained, evaluated or indexed.
    jsarag(*args[3:])
    assert (results / "tiny.md").read_text() == report
    assert not study.exists()


@pytest.fixture(scope="module")
def tiny_signal_setup(tmp_path_factory):
    from jsarag.config import load_config
    from jsarag.index import build_index
    from jsarag.pipeline import build_model, load_corpus

    cfg = load_config(REPO / "configs" / "tiny.yaml")
    index_dir = tmp_path_factory.mktemp("signal") / "index"
    build_index(load_corpus(cfg.data), build_model(cfg).retriever.passage, progress=False).save(index_dir)
    return cfg, index_dir


def test_learning_signal_with_an_uninformative_generator_is_the_prior(tiny_signal_setup, monkeypatch):
    """p_g equal for every passage: the posterior p_r p_g / Z is the prior, so both columns agree."""
    from jsarag.models.generator import Generator
    from jsarag.study.diagnostics import learning_signal

    cfg, index_dir = tiny_signal_setup
    monkeypatch.setattr(Generator, "sequence_logprob",
                        lambda self, queries, kind, passages, answers, reduction="sum":
                        torch.full((len(passages), len(passages[0])), -3.0))
    s = learning_signal(cfg, None, index_dir, limit=12)
    assert s["examples"] == 12
    assert s["posterior_top1"] == pytest.approx(s["prior_top1"])
    assert s["posterior_gold_mass"] == pytest.approx(s["prior_gold_mass"], abs=1e-5)
    assert 0.0 < s["prior_gold_mass"] < 1.0


def test_learning_signal_with_a_generator_that_knows_the_gold_passage(tiny_signal_setup, monkeypatch):
    """p_g 50 nats higher on the gold passage: likelihood and posterior both pick it every time."""
    from jsarag.models.generator import Generator
    from jsarag.pipeline import load_corpus, load_split
    from jsarag.study.diagnostics import learning_signal

    cfg, index_dir = tiny_signal_setup
    corpus = load_corpus(cfg.data)
    gold = {e.query: set(e.positive_ids) for e in load_split(cfg.data, "train", corpus, None)}

    def oracle(self, queries, kind, passages, answers, reduction="sum"):
        return torch.tensor([[50.0 if p.id in gold[q] else 0.0 for p in row] for q, row in zip(queries, passages)])

    monkeypatch.setattr(Generator, "sequence_logprob", oracle)
    s = learning_signal(cfg, None, index_dir, limit=12)
    assert s["likelihood_top1"] == 1.0 and s["posterior_top1"] == 1.0
    assert s["posterior_gold_mass"] > 0.999
    assert s["prior_gold_mass"] < s["posterior_gold_mass"]


def test_cached_json_computes_once_per_key(tmp_path):
    from jsarag.study.compare import cached_json

    calls = []
    compute = lambda: calls.append(1) or {"x": len(calls)}  # noqa: E731
    path = tmp_path / "d" / "c.json"
    assert cached_json(path, compute, key={"n": 1}) == {"x": 1}
    assert cached_json(path, compute, key={"n": 1}) == {"x": 1}  # read back, not recomputed
    assert cached_json(path, compute, key={"n": 2}) == {"x": 2}  # another key: recomputed
    assert len(calls) == 2 and not list(path.parent.glob(".*"))  # no temporary file left


def test_cached_json_is_strict_json_and_returns_what_it_saved(tmp_path):
    from jsarag.study.compare import cached_json

    path = tmp_path / "c.json"
    value = {"recall": float("nan"), "variance": [float("-inf"), 1.5], "n": 3, "text": "not sampled"}
    first = cached_json(path, lambda: value, key={"n": 1})
    saved = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in {path}"))
    assert saved["value"] == {"recall": None, "variance": [None, 1.5], "n": 3, "text": "not sampled"}
    assert first == saved["value"] == cached_json(path, lambda: pytest.fail("recomputed"), key={"n": 1})
