"""Evaluation: retrieve with the prior, generate, score, and write predictions and a summary.

Decoding strategies (the posterior retriever is never used at inference):
- ``per_passage``: decode once with each of the prior's top-K passages and keep the answer with the
  highest  length-normalised confidence x p_r(h|x), i.e. the largest  mean token log-prob + log p_r.
- ``concat``: put the K passages in one prompt and decode once.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from jsarag.config import EvalConfig
from jsarag.data import Batch, Example
from jsarag.eval.metrics import generation_metrics, retrieval_metrics
from jsarag.fileio import write_text_atomic
from jsarag.models.rag import RAGModel
from jsarag.train.distributed import autocast


@dataclass
class EvalResult:
    summary: dict[str, float]
    predictions: list[dict] = field(default_factory=list)


@torch.no_grad()
def answer_batch(model: RAGModel, batch: Batch, cfg: EvalConfig, depth: int) -> list[dict]:
    """Retrieve ``depth`` passages per example, answer from the top ``cfg.top_k`` of them."""
    retriever, generator = model.retriever, model.generator
    query = retriever.prior_vectors(batch.queries)                    # [B, d]
    rows = retriever.search(query, depth)                             # [B, depth]
    top = rows[:, : cfg.top_k]                                        # [B, K]
    log_prior = retriever.log_probs(query, top)                       # [B, K]
    passages = retriever.passages(top)
    B, K = top.shape
    if cfg.decode == "per_passage":
        texts, confidence = generator.generate(
            [q for q in batch.queries for _ in range(K)], batch.kind, [[p] for ps in passages for p in ps],
            num_beams=cfg.num_beams, max_new_tokens=cfg.max_new_tokens)
        choice_score = confidence.view(B, K).to(log_prior.device) + log_prior
        chosen = choice_score.argmax(-1).tolist()
        answers = [texts[b * K + k] for b, k in enumerate(chosen)]
    else:
        answers, _ = generator.generate(batch.queries, batch.kind, passages, num_beams=cfg.num_beams,
                                        max_new_tokens=cfg.max_new_tokens)
        chosen = [None] * B
    corpus = retriever.corpus
    out = []
    for b in range(B):
        out.append({
            "id": batch.ids[b], "query": batch.queries[b], "prediction": answers[b],
            "answers": list(batch.all_answers[b]), "positive_ids": list(batch.positive_ids[b]),
            "retrieved": [corpus[r].id for r in rows[b].tolist()],
            "prior": [round(p, 6) for p in log_prior[b].exp().tolist()],
            "chosen": chosen[b],
        })
    return out


def evaluate(model: RAGModel, examples: Sequence[Example], cfg: EvalConfig, *, device: torch.device,
             precision: str = "auto", progress: bool = True) -> EvalResult:
    was_training = model.training
    model.eval()
    depth = max(cfg.top_k, *cfg.retrieval_ks)
    predictions: list[dict] = []
    for start in tqdm(range(0, len(examples), cfg.batch_size), desc="evaluating", disable=not progress,
                      unit="batch"):
        batch = Batch.from_examples(examples[start:start + cfg.batch_size])
        with autocast(device, precision):
            predictions += answer_batch(model, batch, cfg, depth)
    model.train(was_training)
    summary = {"examples": float(len(predictions))}
    summary.update(generation_metrics([p["prediction"] for p in predictions], [p["answers"] for p in predictions]))
    if any(p["positive_ids"] for p in predictions):
        summary.update(retrieval_metrics([p["retrieved"] for p in predictions],
                                         [p["positive_ids"] for p in predictions], cfg.retrieval_ks))
    return EvalResult(summary, predictions)


def write_result(result: EvalResult, out_dir: str | Path) -> None:
    """predictions.jsonl and summary.json in ``out_dir``, each written to a temporary name first."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "predictions.jsonl",
                "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in result.predictions))
    write_text_atomic(out_dir / "summary.json", json.dumps(result.summary, indent=2))



SUMMARY_KEYS = ("em", "f1", "bleu1", "bleu4", "rouge1", "rouge2", "rougeL", "recall@1", "recall@5",
                "recall@10", "mrr@10")


def summary_table(columns: dict[str, dict[str, float]], title: str = "evaluation"):
    """A rich Table with one column per named summary (e.g. before / after) and a row per metric."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    keys = [k for k in SUMMARY_KEYS if any(k in c for c in columns.values())]
    for key in keys:
        cells = []
        for summary in columns.values():
            value = summary.get(key, math.nan)
            cells.append("-" if math.isnan(value) else (f"{value:.3f}" if "@" in key else f"{value:.2f}"))
        table.add_row(key, *cells)
    return table
