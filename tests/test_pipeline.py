"""`load_run`: the one place that assembles corpus, models, index and device; and the README's example."""

from __future__ import annotations

import re

import numpy as np
import torch
from helpers import REPO

from jsarag.config import load_config
from jsarag.data import Corpus, Examples
from jsarag.pipeline import load_run

TINY = REPO / "configs" / "tiny.yaml"


def test_load_run_from_a_config_file_and_a_config_object(tmp_path):
    run = load_run(TINY, ["eval.split=dev"], progress=False)
    assert isinstance(run.corpus, Corpus) and len(run.corpus) == 185
    assert run.retriever is run.model.retriever and run.retriever.index is run.index
    assert run.retriever.corpus is run.corpus and len(run.index) == len(run.corpus)
    assert run.device == torch.device("cpu") and run.checkpoint is None and run.run_dir is None
    dev = run.split()
    assert isinstance(dev, Examples) and len(dev) == 8  # data.max_eval_examples in tiny.yaml
    assert len(run.split("train", limit=None)) == 964 and run.kind == "question"
    # A Config object and build_dir: the index is built once, saved, and found there the next time.
    cfg = load_config(TINY)
    first = load_run(cfg, build_dir=tmp_path / "index", generator=False, progress=False)
    assert first.model is None and (tmp_path / "index" / "meta.json").is_file()
    again = load_run(cfg, build_dir=tmp_path / "index", generator=False, progress=False)
    assert again.index.location == str(tmp_path / "index")


def test_readme_python_example_runs(monkeypatch):
    monkeypatch.chdir(REPO)  # the example names configs/tiny.yaml relative to the checkout
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    code = re.search(r"From Python:\s+```python\n(.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert torch.isfinite(namespace["loss"]) and "accept_rate" in namespace["metrics"]


def test_encode_corpus_in_chunks_equals_encoding_everything_at_once(monkeypatch, tmp_path):
    from jsarag.index import build, vectors
    from jsarag.models.retriever import passage_text
    from jsarag.pipeline import build_retriever, load_corpus

    cfg = load_config(TINY)
    corpus, encoder = load_corpus(cfg.data, progress=False), build_retriever(cfg).passage
    monkeypatch.setattr(vectors, "CHUNK", 7)  # chunks that cut through the corpus's record batches
    index = build.build_index(corpus, encoder, tmp_path / "ix", shard_rows=50, batch_size=4, progress=False)
    chunked = index.vectors(np.arange(len(corpus)))
    whole = encoder.encode([passage_text(p) for p in corpus], batch_size=4)
    assert chunked.shape == (185, encoder.dim) and index.store.num_shards == 4
    # float16 storage: within half a unit in the last place of float16 (2^-11 relative) of the float32 vectors
    torch.testing.assert_close(torch.from_numpy(chunked), torch.from_numpy(whole), rtol=2**-11, atol=1e-5)
