"""Each format's fixture through `jsarag data convert` (the real CLI) and into `jsarag train` (tiny models)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
# format -> (sources, the split to train on)
CASES = {
    "dpr": ([str(p) for p in sorted((FIXTURES / "dpr").iterdir())], "dev"),
    "msmarco": ([str(p) for p in sorted((FIXTURES / "msmarco").iterdir())], "train"),
    "beir": ([str(FIXTURES / "beir")], "test"),
    "kilt": ([str(FIXTURES / "kilt" / n) for n in ("kilt_knowledgesource.json", "nq-dev-kilt.jsonl",
                                                     "wow-train-kilt.jsonl")], "dev"),
    "orquac": ([str(p) for p in sorted((FIXTURES / "orquac").iterdir())], "train"),
    "doqa": ([str(p) for p in sorted((FIXTURES / "doqa").iterdir())], "train"),
}


def jsarag(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "jsarag", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_converted_fixture_trains(tmp_path, fmt):
    """dpr through the real command line; the others through the same library calls, in this process."""
    from jsarag.config import load_config
    from jsarag.data.convert import convert
    from jsarag.train.loop import train

    sources, split = CASES[fmt]
    out = tmp_path / "data"
    if fmt == "dpr":
        converted = jsarag("data", "convert", fmt, "--out", str(out), *sources)
        assert converted.returncode == 0, converted.stderr
        assert converted.stdout.startswith("converted ") and f"data.corpus={out / 'corpus'}" in converted.stdout
    else:
        convert(fmt, sources, out, progress=False)
    summary = json.loads((out / "dataset.json").read_text())
    top_k = min(2, summary["corpus"]["passages"])
    overrides = [f"data.corpus={out / 'corpus'}", f"data.train={out / (split + '.jsonl')}", "data.dev=null",
                 "train.steps=2", "train.batch_size=1", "train.save_every=2", f"estimator.top_k={top_k}",
                 "estimator.jsa.num_proposals=2"]
    run = tmp_path / "run"
    if fmt == "dpr":
        trained = jsarag("train", str(REPO / "configs" / "tiny.yaml"), "--out", str(run), *overrides)
        assert trained.returncode == 0, trained.stderr
    else:
        train(load_config(REPO / "configs" / "tiny.yaml", overrides), run)
    losses = [json.loads(line).get("loss") for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [v for v in losses if v is not None]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert (run / "checkpoints" / "step_0000002" / "trainer_state.json").is_file()


def test_malformed_row_exits_2_and_leaves_nothing(tmp_path):
    tsv = tmp_path / "psgs_w100.tsv"
    tsv.write_text('id\ttext\ttitle\n1\t"fine"\tA\n2\t"no title column"\n', encoding="utf-8")
    result = jsarag("data", "convert", "dpr", "--out", str(tmp_path / "out"), str(tsv))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "psgs_w100.tsv:3" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["psgs_w100.tsv"]
