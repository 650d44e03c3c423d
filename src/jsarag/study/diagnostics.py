"""Diagnostics for a trained run beyond the evaluation: how good is the posterior retriever?

JSA-RAG and VRAG learn q(h | x, y); JSA's sampler is only as efficient as q proposes the passages that
explain y. Its Recall@k against the gold passages (given the gold answer, as in training) measures that.
"""

from __future__ import annotations

from pathlib import Path

import torch

from jsarag.config import load_config
from jsarag.eval.metrics import recall_at_k
from jsarag.pipeline import load_run
from jsarag.train.checkpoint import latest_checkpoint


def run_state(run_dir: str | Path):
    """A training run folder's resolved config, newest checkpoint (or None) and the index that goes with
    it: the checkpoint's own (refreshed while the passage encoder trained), else the run's."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml", saved=True)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None and (checkpoint / "index").is_dir():
        index_dir = checkpoint / "index"
    else:
        index_dir = Path(cfg.index.path) if cfg.index.path else run_dir / "index"
    return cfg, checkpoint, index_dir


@torch.no_grad()
def retriever_recall(cfg, checkpoint: Path | None, index_dir: Path, *, ks: tuple[int, ...] = (1, 5),
                     batch_size: int = 64) -> dict[str, float]:
    """Recall@k of the prior (x) and posterior (x [SEP] y) retrievers on the config's eval split;
    untrained retrievers when ``checkpoint`` is None."""
    run = load_run(cfg, checkpoint=checkpoint, build_dir=index_dir, generator=False, progress=False)
    corpus, retriever, examples = run.corpus, run.retriever, run.split()
    retriever.eval()
    depth = max(ks)
    found: dict[str, list[list[str]]] = {"prior": [], "posterior": []}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        queries, answers = [e.query for e in chunk], [e.answers[0] for e in chunk]
        with run.autocast():
            vectors = {"prior": retriever.prior_vectors(queries),
                       "posterior": retriever.posterior_vectors(queries, answers)}
        for name, v in vectors.items():
            found[name] += [[corpus[r].id for r in row] for row in retriever.search(v, depth).tolist()]
    positives = [e.positive_ids for e in examples]
    return {f"{name}_recall@{k}": recall_at_k(rows, positives, k) for name, rows in found.items() for k in ks}


@torch.no_grad()
def learning_signal(cfg, checkpoint: Path | None, index_dir: Path, *, split: str = "train", limit: int = 60,
                    batch_size: int = 4) -> dict[str, float]:
    """Does the generator's likelihood point at the gold passage? The signal every estimator here learns from.

    For ``limit`` examples of ``split`` with gold passages: the candidates are the prior's top K plus the
    gold passage (the prior's top K+1 when the gold one is among them already), K = ``estimator.top_k``.
    Over them, with ``p_post ∝ p_r · p_g`` the posterior that the prior is trained towards:

    - ``prior_top1``, ``likelihood_top1``, ``posterior_top1``: how often the gold passage is the argmax of
      the prior, of log p_g(y | x, h) (summed over answer tokens) and of p_post;
    - ``prior_gold_mass``, ``posterior_gold_mass``: the mean probability of the gold passage under each.

    When ``posterior_gold_mass`` is not above ``prior_gold_mass``, moving the prior towards the posterior
    does not, on average, move it towards the gold passages.
    """
    run = load_run(cfg, checkpoint=checkpoint, build_dir=index_dir, progress=False)
    corpus, model = run.corpus, run.model
    examples = [e for e in run.split(split, limit=None) if e.positive_ids][:limit]
    model.eval()
    retriever, generator, k = model.retriever, model.generator, cfg.estimator.top_k
    hits = {"prior_top1": 0.0, "likelihood_top1": 0.0, "posterior_top1": 0.0}
    mass = {"prior_gold_mass": 0.0, "posterior_gold_mass": 0.0}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        queries, answers = [e.query for e in chunk], [e.answers[0] for e in chunk]
        with run.autocast():
            prior_vectors = retriever.prior_vectors(queries)
        top = retriever.search(prior_vectors, k + 1).tolist()
        rows, gold = [], []
        for e, ranked in zip(chunk, top):
            gold_row = corpus.row(e.positive_ids[0])
            row = ranked if gold_row in ranked else ranked[:k] + [gold_row]
            rows.append(row)
            gold.append(row.index(gold_row))
        rows_t = torch.tensor(rows, device=run.device)
        with run.autocast():
            log_prior = retriever.log_probs(prior_vectors, rows_t).float()  # queries encoded once
            log_lik = generator.sequence_logprob(queries, chunk[0].kind, retriever.passages(rows_t), answers).float()
        log_post = torch.log_softmax(log_prior + log_lik, dim=-1)
        g = torch.tensor(gold, device=run.device)[:, None]
        for name, scores in (("prior_top1", log_prior), ("likelihood_top1", log_lik), ("posterior_top1", log_post)):
            hits[name] += (scores.argmax(-1, keepdim=True) == g).float().sum().item()
        mass["prior_gold_mass"] += log_prior.gather(1, g).exp().sum().item()
        mass["posterior_gold_mass"] += log_post.gather(1, g).exp().sum().item()
    n = max(1, len(examples))
    return {"examples": float(len(examples)), **{k_: v / n for k_, v in {**hits, **mass}.items()}}
