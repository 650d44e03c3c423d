"""A comparison's result files: a run's results round-trip through its file, results from other settings are
refused, and seeds run on two machines (two study folders, one report folder) make one report, rebuilt from the
files alone without training anything."""

from __future__ import annotations

import json
import math
import re

import pytest
from helpers import REPO, jsarag, jsarag_logged

from jsarag.config import load_config
from jsarag.errors import UserError
from jsarag.provenance import code_header
from jsarag.study import compare
from jsarag.study import results as results_module
from jsarag.study.results import RunResult, check, load_result, result_path, save_result, settings_of

TINY = REPO / "configs" / "tiny.yaml"


def a_result() -> RunResult:
    return RunResult("jsa_sum", 2, {"em": 100 / 3, "f1": 0.123456789, "examples": 3},
                     {"em": {"q1": 1.0, "q2": 0.0}, "f1": {"q1": 1.0, "q2": 2 / 7}, "recall@1": {"q1": 1.0, "q2": 0.0}},
                     seconds_per_100_steps=123.456789, median_seconds_per_100_steps=120.0,
                     peak_memory_mib=2048.5, curves=[{"step": 1, "loss": 1 / 3, "accept_rate": None},
                                                     {"step": 2, "loss": 0.25}],
                     headers=[{"precision": "fp32", "precision_setting": "auto", "device": "cpu", "cpu": "AVX2"}],
                     signal={"examples": 4.0, "prior_top1": 0.25, "posterior_gold_mass": 1 / 7},
                     settings={"optim.lr_generator": 1.23456789e-4, "train.freeze": ["prior"], "data.test": None})


# ---- the file ------------------------------------------------------------------------------------------
def test_a_run_result_round_trips_through_its_file_to_six_significant_digits(tmp_path):
    result = a_result()
    path = result_path(tmp_path / "runs", "jsa_sum", 2)
    assert path == tmp_path / "runs" / "seed2" / "jsa_sum.json"
    assert result_path(tmp_path / "runs", "untrained", -1) == tmp_path / "runs" / "untrained.json"
    save_result(path, result)
    back = load_result(path)
    assert (back.method, back.seed, back.headers) == (result.method, result.seed, result.headers)
    assert back.summary == {"em": 33.3333, "f1": 0.123457, "examples": 3}
    assert back.per_question == {"em": {"q1": 1.0, "q2": 0.0}, "f1": {"q1": 1.0, "q2": 0.285714},
                                 "recall@1": {"q1": 1.0, "q2": 0.0}}
    assert (back.seconds_per_100_steps, back.median_seconds_per_100_steps, back.peak_memory_mib) == (123.457, 120.0,
                                                                                                      2048.5)
    assert math.isnan(back.step_spread)  # not measured stays not measured
    assert back.curves == [{"step": 1, "loss": 0.333333, "accept_rate": None}, {"step": 2, "loss": 0.25}]
    assert back.signal == {"examples": 4.0, "prior_top1": 0.25, "posterior_gold_mass": 0.142857}
    assert back.settings == result.settings  # compared exactly, so never rounded
    assert back.to_json() == path.read_text()  # what was read writes the same bytes
    assert [p.name for p in path.parent.iterdir()] == ["jsa_sum.json"]  # no temporary file left


def test_what_was_not_measured_is_null_in_a_strict_json_file_and_nan_again_when_read(tmp_path):
    result = a_result()
    result.summary["bleu4"] = math.nan
    result.per_question["f1"]["q2"] = math.nan
    result.signal["prior_top1"] = math.nan
    result.curves[1]["accept_rate"] = math.nan
    path = tmp_path / "jsa_sum.json"
    save_result(path, result)

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    data = json.loads(path.read_text(), parse_constant=no_constants)  # what jq or a browser would read
    assert data["step_spread"] is None and data["summary"]["bleu4"] is None
    assert data["per_question"]["f1"]["q2"] is None and data["signal"]["prior_top1"] is None
    back = load_result(path)
    assert math.isnan(back.step_spread) and math.isnan(back.summary["bleu4"])
    assert math.isnan(back.per_question["f1"]["q2"]) and math.isnan(back.signal["prior_top1"])
    assert back.per_question["f1"]["q1"] == 1.0 and back.summary["examples"] == 3
    assert back.curves[1] == {"step": 2, "loss": 0.25, "accept_rate": None}  # the curves' readers skip None
    assert back.to_json() == path.read_text()


def test_an_infinite_value_is_null_in_the_file_and_an_infinite_setting_is_kept_and_compared(tmp_path):
    """A skipped fp16 step logs an infinite gradient norm; ``optim.max_grad_norm: inf`` means no clipping. Neither
    may stop the result file from being written, nor the file from being accepted by the comparison it came from."""
    result = a_result()
    result.curves[1]["grad_norm/prior"] = math.inf
    result.signal["prior_top1"] = -math.inf
    cfg = load_config(REPO / "configs" / "tiny.yaml", ["optim.max_grad_norm=inf"])
    result.settings = settings_of(cfg)
    assert result.settings["optim.max_grad_norm"] == "inf"
    path = tmp_path / "jsa_sum.json"
    save_result(path, result)
    data = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in {path}"))
    assert data["curves"][1]["grad_norm/prior"] is None and data["signal"]["prior_top1"] is None
    back = check(load_result(path), method="jsa_sum", seed=2, settings=settings_of(cfg), source=path)
    assert math.isnan(back.signal["prior_top1"]) and back.curves[1]["grad_norm/prior"] is None
    with pytest.raises(UserError, match=r"optim.max_grad_norm='inf' \(here 1.0\)"):
        check(back, method="jsa_sum", seed=2, settings=settings_of(load_config(REPO / "configs" / "tiny.yaml")),
              source=path)


def test_one_variance_redraw_is_refused_before_anything_trains(tmp_path, monkeypatch):
    from jsarag.study.variance import gradient_variance

    monkeypatch.setattr(compare, "run_comparison", lambda *a, **k: pytest.fail("trained first"))
    with pytest.raises(UserError, match="--variance-draws 1: a variance needs at least 2"):
        compare.run_study(REPO / "configs" / "tiny.yaml", name="t", out=tmp_path / "out", seeds=[0],
                          methods=["jsa_sum"], reference="jsa_sum", variance_draws=1, signal_examples=0,
                          report_dir=tmp_path / "docs", overrides=[])
    with pytest.raises(UserError, match="1 redraw"):
        gradient_variance(REPO / "configs" / "tiny.yaml", [], ["jsa_sum"], draws=1)


def test_a_file_that_is_no_result_is_one_clear_error(tmp_path):
    path = tmp_path / "untrained.json"
    path.write_text('{"method": "untrained"}')
    with pytest.raises(UserError, match=re.escape(f"{path} is not a comparison's result file")):
        load_result(path)


# ---- settings ------------------------------------------------------------------------------------------
def test_settings_leave_out_the_seed_the_paths_and_the_options_of_other_estimators():
    jsa = settings_of(load_config(TINY))
    assert settings_of(load_config(TINY, ["train.seed=3", "index.path=/elsewhere", "train.progress=true"])) == jsa
    assert jsa["estimator.name"] == "jsa" and jsa["estimator.jsa.num_proposals"] == 8 and jsa["train.steps"] == 4
    assert "train.seed" not in jsa and "index.path" not in jsa
    assert not any(key.startswith("estimator.vrag.") for key in jsa)
    vrag = settings_of(load_config(TINY, ["estimator.name=vrag"]))
    assert vrag["estimator.vrag.mode"] == "exact" and not any(key.startswith("estimator.jsa.") for key in vrag)


def test_a_result_from_other_settings_is_refused_naming_the_file_and_what_differs(tmp_path):
    path = tmp_path / "seed2" / "jsa_sum.json"
    here = settings_of(load_config(TINY))
    result = a_result()
    result.settings = settings_of(load_config(TINY, ["train.steps=8", "data.max_eval_examples=2"]))
    with pytest.raises(UserError) as refused:
        check(result, method="jsa_sum", seed=2, settings=here, source=path)
    assert str(refused.value) == (f"{path} ran with other settings than this comparison: "
                                  "data.max_eval_examples=2 (here 8); train.steps=8 (here 4)")
    result.settings = settings_of(load_config(TINY, ["train.steps=8", "train.batch_size=2", "optim.lr_prior=1",
                                                     "eval.top_k=1"]))
    with pytest.raises(UserError, match=r"optim.lr_prior=1.0 \(here 0.001\); train.steps=8 \(here 4\); "
                                        r"train.batch_size=2 \(here 4\) and 1 more$"):
        check(result, method="jsa_sum", seed=2, settings=here, source=path)
    with pytest.raises(UserError, match=re.escape(f"{path} holds the result of jsa_sum at seed 2, not of jsa_sum "
                                                  "at seed 1")):
        check(result, method="jsa_sum", seed=1, settings=result.settings, source=path)
    assert check(result, method="jsa_sum", seed=2, settings=result.settings, source=path) is result


def test_a_result_that_differs_only_in_how_it_computed_joins_the_comparison_and_the_page_says_so(tmp_path):
    """A file written before `generator.share_prefix` existed, or with a smaller scoring batch, is the same
    computation up to rounding: accepted, and named on the page; a difference in what is computed still refuses."""
    here = settings_of(load_config(TINY))
    assert here["generator.share_prefix"] is True
    older = settings_of(load_config(TINY, ["generator.score_batch_size=2", "eval.batch_size=3"]))
    del older["generator.share_prefix"]  # recorded before the option existed
    result = a_result()
    result.settings = older
    assert check(result, method="jsa_sum", seed=2, settings=here, source=tmp_path / "f.json") is result
    result.settings = {**older, "train.steps": 8}
    with pytest.raises(UserError, match=r"other settings than this comparison: train.steps=8 \(here 4\)$"):
        check(result, method="jsa_sum", seed=2, settings=here, source=tmp_path / "f.json")

    def run(method, seed, settings):
        r = a_result()
        r.method, r.seed, r.settings = method, seed, settings
        return r

    results = [run("untrained", -1, here), run("jsa_sum", 0, older), run("rag_sequence", 0, older),
               run("jsa_sum", 1, here), run("rag_sequence", 1, older)]
    assert results_module.how_settings_differ(results) == [
        "`generator.share_prefix` True in the untrained models, seed 1 (jsa_sum); False (not recorded: run before "
        "the option existed) in seed 0, seed 1 (rag_sequence)",
        "`generator.score_batch_size` 64 in the untrained models, seed 1 (jsa_sum); 2 in seed 0, seed 1 "
        "(rag_sequence)",
        "`eval.batch_size` 8 in the untrained models, seed 1 (jsa_sum); 3 in seed 0, seed 1 (rag_sequence)"]
    both = [results[0], *(run(m, s, older) for s in (0, 1, 2) for m in ("jsa_sum", "rag_sequence"))]
    assert results_module.how_settings_differ(both)[0] == (
        "`generator.share_prefix` True in the untrained models; False (not recorded: run before the option "
        "existed) in seeds 0, 1, 2")
    text = compare.settings_text(load_config(TINY), config=TINY, overrides=[], results=results)
    assert "- The runs differ in how they computed, not in what: `generator.share_prefix` True in" in text
    alike = [results[0], results[3]]
    assert results_module.how_settings_differ(alike) == []
    assert "differ in how" not in compare.settings_text(load_config(TINY), config=TINY, overrides=[],
                                                        results=alike)


def test_a_run_folder_from_before_an_option_of_how_is_recorded_without_it(tmp_path):
    """Collecting an old run folder again must not record today's default for an option its config.yaml lacks."""
    import yaml

    from jsarag.config import save_config

    path = tmp_path / "config.yaml"
    save_config(load_config(TINY), path)
    today = results_module.run_settings(load_config(path, saved=True), path)
    assert today == settings_of(load_config(TINY)) and today["generator.share_prefix"] is True
    old = yaml.safe_load(path.read_text())
    del old["generator"]["share_prefix"], old["generator"]["score_batch_size"]
    path.write_text(yaml.safe_dump(old))
    recorded = results_module.run_settings(load_config(path, saved=True), path)
    assert recorded == {k: v for k, v in today.items()
                        if k not in ("generator.share_prefix", "generator.score_batch_size")}


def test_the_page_names_the_code_each_run_trained_with():
    def run(method, seed, *headers):
        r = a_result()
        r.method, r.seed, r.headers = method, seed, list(headers)
        return r

    cpu = {"precision": "bf16", "precision_setting": "auto", "device": "cpu", "cpu": "AVX512 kernels, native bf16"}
    a, b = {**cpu, "jsarag": "0.1.0", "commit": "aaaaaaaaaaaa"}, {**cpu, "jsarag": "0.1.0", "commit": "bbbbbbbbbbbb"}
    results = [run("untrained", -1), run("jsa_sum", 0, cpu), run("rag_sequence", 0, cpu), run("jsa_sum", 1, a),
               run("rag_sequence", 1, a, b), run("jsa_sum", 2, {**cpu, "jsarag": "0.2.0"})]
    assert compare._code_lines(results) == [
        "- Code the runs trained with (jsarag's commit, or its version outside a git checkout): not recorded in the "
        "untrained models, seed 0; `aaaaaaaaaaaa` in seed 1 (jsa_sum); `aaaaaaaaaaaa`, `bbbbbbbbbbbb` in seed 1 "
        "(rag_sequence); `0.2.0` in seed 2."]
    assert compare._code_lines(results[:3]) == []  # nothing recorded: no line
    text = compare.settings_text(load_config(TINY), config=TINY, overrides=[], results=results)
    assert "- Code the runs trained with" in text


def test_a_committed_variance_table_is_read_back_across_settings_of_how_but_not_of_what(tmp_path):
    here = settings_of(load_config(TINY))
    key = {"draws": 20, "methods": ["jsa_sum"], "settings": here}
    older = dict(here, **{"generator.score_batch_size": 2})
    del older["generator.share_prefix"]
    path = tmp_path / "variance.json"
    path.write_text(json.dumps({"key": {**key, "settings": older}, "value": {"rows": 1}}))
    read = results_module.read_cached
    assert read(path, key) is None  # plain equality: the keys differ
    assert read(path, key, compare._same_variance_key) == {"rows": 1}
    for other in ({**key, "draws": 10}, {**key, "methods": ["rag_sequence"]},
                  {**key, "settings": dict(here, **{"train.steps": 8})}):
        assert read(path, other, compare._same_variance_key) is None


def test_from_results_names_the_missing_result_file(tmp_path):
    runs = tmp_path / "results" / "tiny" / "runs"
    with pytest.raises(UserError, match=re.escape(f"--from-results: no result file {runs / 'untrained.json'} "
                                                  "(and 2 more)")):
        compare.run_comparison(TINY, tmp_path / "study", seeds=[0], methods=["jsa_sum"], overrides=[],
                               runs_dir=runs, from_results=True)
    assert not (tmp_path / "study").exists()


# ---- two machines, one report ----------------------------------------------------------------------
OVERRIDES = ["train.steps=2", "train.save_every=2", "data.max_train_examples=8", "data.max_eval_examples=2"]
OPTIONS = ["--methods", "rag_sequence", "--variance-draws", "0", "--signal-examples", "2"]


def refuse(*args, **kwargs):
    raise AssertionError("trained, evaluated or loaded models where result files were to be read")


@pytest.fixture(scope="module")
def machines(tmp_path_factory):
    """Seed 0 run on machine A and seed 1 on machine B (in this process, into two study folders), each writing
    its result files into the same report folder, as a checkout that both commit to would have them."""
    root = tmp_path_factory.mktemp("machines")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compare, "_jsarag", jsarag_logged)
        patch.setenv("TQDM_DISABLE", "1")
        for machine, seed in (("a", 0), ("b", 1)):
            jsarag("compare", TINY, "--name", "tiny", "--out", root / machine, "--seeds", seed,
                   "--report-dir", root / "results", *OPTIONS, *OVERRIDES)
    return root


@pytest.mark.slow
def test_each_machine_writes_the_result_files_of_its_seed(machines):
    runs = machines / "results" / "tiny" / "runs"
    assert sorted(p.relative_to(runs).as_posix() for p in runs.rglob("*") if p.is_file()) == [
        "seed0/frozen_retriever.json", "seed0/rag_sequence.json", "seed1/frozen_retriever.json",
        "seed1/rag_sequence.json", "untrained.json"]
    result = load_result(runs / "seed1" / "rag_sequence.json")
    assert result.settings == settings_of(load_config(TINY, [*OVERRIDES, "estimator.name=rag_sequence"]))
    assert [c["step"] for c in result.curves] == [1, 2]
    assert "seconds" not in result.curves[0] and "loss" in result.curves[0]  # only what the report reads
    assert result.headers and result.signal["examples"] == 2
    assert (machines / "a" / "untrained" / "config.yaml").is_file()  # what the untrained models were evaluated with
    assert not (machines / "b" / "untrained").exists()  # B found A's untrained.json in the shared report folder


@pytest.mark.slow
def test_the_report_of_both_machines_seeds_is_rebuilt_from_the_result_files_alone(machines, monkeypatch):
    for name in ("_jsarag", "run_state", "retriever_recall", "learning_signal", "gradient_variance"):
        monkeypatch.setattr(compare, name, refuse)
    results = machines / "results"
    jsarag("compare", TINY, "--name", "tiny", "--out", machines / "nowhere", "--seeds", "0,1", "--report-dir",
           results, "--from-results", *OPTIONS, *OVERRIDES)
    assert not (machines / "nowhere").exists()
    report = (results / "tiny.md").read_text()
    for needle in ("| untrained | 1 |", "| rag_sequence | 2 |", "| frozen_retriever | 2 |", "--seeds 0,1 ",
                   "On the first 2 training questions",
                   f"- Code the runs trained with (jsarag's commit, or its version outside a git checkout): not "
                   f"recorded in the untrained models; `{code_header().get('commit', code_header()['jsarag'])}` in "
                   "seeds 0, 1.", "Not computed for this page (`--variance-draws 0`)."):
        assert needle in report, needle
    significance = next(line for line in report.splitlines() if line.startswith("| frozen_retriever | ")
                        and "[" in line)
    assert significance.count("/2)") == 3  # both seeds paired, for each metric
    assert (results / "tiny" / "learning_curves.png").is_file()


@pytest.mark.slow
def test_a_rerun_trains_nothing_and_rewrites_the_same_files(machines, monkeypatch):
    """Machine A again, with both seeds: its own runs are collected again from their folders, seed 1 is read from
    machine B's files (its run folder is not here), and nothing is trained."""
    runs = machines / "results" / "tiny" / "runs"
    before = {p: p.read_bytes() for p in runs.rglob("*.json")}
    monkeypatch.setattr(compare, "_jsarag", refuse)
    jsarag("compare", TINY, "--name", "tiny", "--out", machines / "a", "--seeds", "0,1", "--report-dir",
           machines / "results", *OPTIONS, *OVERRIDES)
    assert {p: p.read_bytes() for p in runs.rglob("*.json")} == before
    assert not (machines / "a" / "seed1").exists()


@pytest.mark.slow
def test_result_files_from_other_settings_are_refused(machines, monkeypatch):
    monkeypatch.setattr(compare, "_jsarag", refuse)
    runs = machines / "results" / "tiny" / "runs"
    other = [o for o in OVERRIDES if not o.startswith("train.steps=")] + ["train.steps=3"]
    for from_results in (True, False):
        with pytest.raises(UserError, match=re.escape(f"{runs / 'untrained.json'} ran with other settings than "
                                                      "this comparison: train.steps=2 (here 3)")):
            compare.run_comparison(TINY, machines / "c", seeds=[0], methods=["rag_sequence"], overrides=other,
                                   runs_dir=runs, from_results=from_results)
    assert not (machines / "c").exists()
