"""Diagnostics for a trained run beyond the evaluation: how good is the posterior retriever?

JSA-RAG and VRAG learn q(h | x, y); JSA's sampler is only as efficient as q proposes the passages that
explain y. Its Recall@k against the gold passages (given the gold answer, as in training) measures that.
"""

from __future__ import annotations

from pathlib import Path

import torch

from jsarag.config import load_config
from jsarag.eval.metrics import recall_at_k
from jsarag.index import PassageIndex
from jsarag.models.retriever import Retriever
from jsarag.pipeline import load_corpus, load_split
from jsarag.train.checkpoint import latest_checkpoint
from jsarag.train.distributed import autocast


def run_recall(run_dir: str | Path) -> dict[str, float]:
    """``retriever_recall`` for a training run folder: its config, newest checkpoint and index."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None and (checkpoint / "index").is_dir():
        index_dir = checkpoint / "index"
    else:
        index_dir = Path(cfg.index.path) if cfg.index.path else run_dir / "index"
    return retriever_recall(cfg, checkpoint, index_dir)


@torch.no_grad()
def retriever_recall(cfg, checkpoint: Path | None, index_dir: Path, *, ks: tuple[int, ...] = (1, 5),
                     batch_size: int = 64) -> dict[str, float]:
    """Recall@k of the prior (x) and posterior (x [SEP] y) retrievers on the config's eval split;
    untrained retrievers when ``checkpoint`` is None."""
    corpus = load_corpus(cfg.data)
    examples = load_split(cfg.data, cfg.eval.split, corpus, cfg.data.max_eval_examples)
    retriever = Retriever.from_config(cfg.retriever, checkpoint / "retriever" if checkpoint else None)
    retriever.attach(PassageIndex.load(index_dir), corpus)
    retriever.eval()
    depth = max(ks)
    found: dict[str, list[list[str]]] = {"prior": [], "posterior": []}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        queries, answers = [e.query for e in chunk], [e.answers[0] for e in chunk]
        with autocast(torch.device("cpu"), cfg.train.precision):
            vectors = {"prior": retriever.prior_vectors(queries),
                       "posterior": retriever.posterior_vectors(queries, answers)}
        for name, v in vectors.items():
            found[name] += [[corpus[r].id for r in row] for row in retriever.search(v, depth).tolist()]
    positives = [e.positive_ids for e in examples]
    return {f"{name}_recall@{k}": recall_at_k(rows, positives, k) for name, rows in found.items() for k in ks}
