"""The benchmark scripts: each end to end at its smallest size (``--smoke``: tiny random models, the shipped SQuAD
sample) into a temporary folder, its results holding the keys its report reads; docs/benchmarks.md as
benchmarks/report.py renders it from the committed results; the as-released JSA scorer's loss."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

MACHINE = {"cpu_model", "cpu_flags", "torch_threads", "versions", "precision", "load_average_at_end"}
EXPECTED = {  # script -> keys of its results (besides "machine")
    "step_cost": {"shape", "variants", "ratios", "jsa_over_rag_sequence", "jsa_over_rag_sequence_at_init",
                  "released_over_jsa", "vrag_over_rag_sequence", "in_training"},
    "peer_rag": {"ours_over_transformers", "equality", "timing", "config", "what_is_timed"},
    "index_encoding": {"index", "encoding", "build_overhead", "search_overhead", "hnsw32_build_overhead",
                       "hnsw32_search_overhead", "encode_throughput_ratio", "encode_throughput_ratio_bf16"},
    "scaling": {"shape", "jsa_time", "jsa_memory", "index_search", "peak_mib", "step_delta_mib"},
    "eval_throughput": {"shape", "variants", "per_passage_K5_qps", "concat_K5_qps", "concat_over_per_passage_qps"},
    "profile_jsa": {"shape", "ranges", "phase_fractions", "top_ops", "distinct_proposals", "distinct_states",
                    "step_median_s", "profiled_step_median_s"},
    "scale": {"sizes", "extrapolated_21m", "ask_first_answer_seconds", "index_resume_identical", "ivfpq",
              "ivfpq_recall_at_10", "recall", "sharded_topk_identical", "train_step_ratio_1m_over_10k"},
}


def run_smoke(name: str, tmp_path: Path, *extra: str) -> tuple[dict, str]:
    """``benchmarks/NAME.py --smoke`` in a subprocess: its results and its standard output. It must leave none of its
    scratch folders (``jsarag-*``: training runs, model copies, indexes; gigabytes at full size) in the temporary
    folder it ran with; torch's own (its compiler cache, torchrun's) are not ours to remove."""
    out, scratch = tmp_path / f"{name}.json", tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TMPDIR": str(scratch)}
    run = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), "--smoke", "--out", str(out), *extra],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in scratch.glob("jsarag*")) == []
    return json.loads(out.read_text()), run.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPECTED)
def test_benchmark_runs_end_to_end(name, tmp_path):
    results, stdout = run_smoke(name, tmp_path, *(["--work", str(tmp_path / "work")] if name == "scale" else []))
    assert EXPECTED[name] <= set(results), EXPECTED[name] - set(results)
    assert MACHINE <= set(results["machine"])
    assert {"cpu", "precision", "precision_setting", "device"} <= set(results["machine"]["precision"])
    if name == "index_encoding":
        assert results["encoding"]["host_side"]["passages_per_s"] > 0
    if name == "profile_jsa":
        module = importlib.import_module(name)
        assert set(module.JSA_RANGES + module.STEP_RANGES) <= set(results["ranges"])
    section = importlib.import_module(name).report(results)
    assert section.startswith("## ") and section in stdout  # main prints the report of what it wrote


@pytest.mark.slow
def test_step_cost_training_only_trains_the_named_estimators(tmp_path):
    names = ["rag_sequence", "jsa", "jsa_unshared"]
    results, stdout = run_smoke("step_cost", tmp_path, "--training-only", "--training-variants", ",".join(names))
    training = results["in_training"]
    assert list(training["per_estimator"]) == names and "variants" not in results  # nothing timed at init
    assert {"jsa_over_rag_sequence", "jsa_unshared_over_rag_sequence"} <= set(training)
    assert training["per_estimator"]["jsa_unshared"]["mean_distinct_states"] >= 1
    section = importlib.import_module("step_cost").report_training({"run": results})
    assert section.startswith("### ") and "| jsa_unshared |" in section and section in stdout


def test_report_reproduces_docs_benchmarks_from_the_committed_results():
    report = importlib.import_module("report")
    assert report.render(BENCHMARKS / "results") == (REPO / "docs" / "benchmarks.md").read_text()


def test_the_released_scorer_gives_the_library_loss():
    """step_cost's jsa_released runs every proposal and state through the generator: cost, not a new estimate."""
    from test_models_tiny import EXAMPLES, make_model

    from jsarag.data import Batch
    from jsarag.estimators import JSA, JSAConfig

    step_cost = importlib.import_module("step_cost")
    model, batch, values = make_model(), Batch.from_examples(EXAMPLES), []
    for scorer in (None, step_cost.score_every_pick):
        torch.manual_seed(3)
        estimator = JSA(JSAConfig(num_proposals=6), top_k=3, **({"scorer": scorer} if scorer else {}))
        with torch.no_grad():
            loss, metrics = estimator(model, batch)
        values.append((loss.item(), metrics["accept_rate"]))
    assert values[0][0] == pytest.approx(values[1][0], rel=1e-5)
    assert values[0][1] == values[1][1]


def test_match_chain_sets_the_grid_point_closest_to_the_target():
    """step_cost --match-chain: every grid point stepped on every batch, the point nearest the target (sum of
    the absolute log ratios) set on the model. A fake stepper whose chain follows temperature and scale."""
    from types import SimpleNamespace

    step_cost = importlib.import_module("step_cost")
    scale = SimpleNamespace(factor=1.0)
    model = SimpleNamespace(retriever=SimpleNamespace(temperature=0.1))
    seen = []

    def step(estimator, batch, seed):
        assert seed == step_cost.BATCH_SEED + [0, 2].index(batch)  # the seed the timed step of that batch gets
        seen.append((model.retriever.temperature, scale.factor, batch))
        return 0.0, {"distinct_proposals": 1000 * model.retriever.temperature + batch,
                     "distinct_states": 12 / scale.factor}

    forgotten = []
    stepper = SimpleNamespace(model=model, step=step, forget=forgotten.append)
    out = step_cost.match_chain(stepper, scale, [0, 2], 10, 50, (4.0, 3.0))
    grid = [(t, c) for t in step_cost.TEMPERATURES for c in step_cost.LOGIT_SCALES]
    assert [(t, c) for t, c, _ in seen] == [p for p in grid for _ in range(2)] and {b for *_, b in seen} == {0, 2}
    assert (out["chosen"]["temperature"], out["chosen"]["logit_scale"]) == (0.003, 4.0)  # 1000*0.003+1 = 4, 12/4 = 3
    assert out["chosen"]["distance"] == 0 and len(out["grid"]) == len(grid)
    assert len(forgotten) == 1  # the calibration's optimiser is freed before the timed steps
    assert (model.retriever.temperature, scale.factor) == (0.003, 4.0)
    far = next(g for g in out["grid"] if (g["temperature"], g["logit_scale"]) == (0.012, 1.0))
    assert far["distance"] == pytest.approx(abs(math.log(13 / 4)) + abs(math.log(12 / 3)), abs=1e-3)


def test_logit_scale_multiplies_the_generators_logits():
    from helpers import make_model

    step_cost = importlib.import_module("step_cost")
    generator = make_model().generator
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        before = generator.model(input_ids=ids).logits
        scale = step_cost.LogitScale(generator, 3.0)
        after = generator.model(input_ids=ids).logits
        scale.factor = 1.0
        back = generator.model(input_ids=ids).logits
        scale.factor = 5.0
        scale.remove()
        removed = generator.model(input_ids=ids).logits
    assert torch.allclose(after, 3 * before, atol=1e-5) and torch.allclose(back, before)
    assert torch.equal(removed, before)


def test_a_machine_whose_kernels_were_held_back_says_so(monkeypatch):
    """A run standing in for an AVX2-only CPU (kernels capped by environment variables) records the cap, and its
    machine line names it; a run without a cap names none."""
    common = importlib.import_module("_common")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)
    m = common.machine()
    assert m["kernel_limits_env"] == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    header = {"precision": "fp32", "cpu": "AVX2 kernels, native bf16"}
    assert common.precision_note({"precision": header, "kernel_limits_env": m["kernel_limits_env"]}) == (
        "; torch AVX2 kernels, native bf16 (held there by `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`), "
        "`train.precision: auto` resolves to fp32")
    assert common.precision_note({"precision": header}) == (
        "; torch AVX2 kernels, native bf16, `train.precision: auto` resolves to fp32")
