"""RAG-Sequence: top-K marginalisation over the prior (Lewis et al., NeurIPS 2020, arXiv 2005.11401).

    log p(y | x) ~= log sum_{h in topK(x)} p_r(h | x) p_g(y | x, h)
    loss = -mean_b of that                                         [B, K] -> [B] -> scalar

p_r is renormalised over the prior's top K (softmax of score / tau over the K candidates). The
estimate is biased: mass outside the top K is ignored. Gradient reaches the prior query encoder
through p_r, and the generator through every one of the K passages.

Deviations from the paper:
1. The generator may be decoder-only (the paper uses BART); nothing else changes.
2. The released JSA-RAG code applies softmax twice in one RAG branch (near-uniform p_r); not here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.profiler import record_function

from jsarag.data import Batch
from jsarag.estimators.base import Stateless, prior_top_k


@dataclass
class RagSequenceConfig:
    """RAG-Sequence has no options beyond the shared ``estimator.top_k``."""


def rag_sequence_nll(log_prior: torch.Tensor, seq_loglik: torch.Tensor) -> torch.Tensor:
    """-log sum_k p_r(h_k|x) p_g(y|x,h_k): [B, K], [B, K] -> [B]."""
    return -torch.logsumexp(log_prior + seq_loglik, dim=-1)


class RagSequence(Stateless):
    name = "rag_sequence"
    options = RagSequenceConfig
    methods = {"rag_sequence": {}}
    panels = ()
    trains = frozenset({"prior", "passage", "generator"})
    deterministic = True

    def __init__(self, cfg: RagSequenceConfig | None = None, top_k: int = 10):
        self.cfg = cfg or RagSequenceConfig()
        self.top_k = top_k

    def __call__(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        retriever, generator = model.retriever, model.generator
        # 1. Retrieve the prior's top K and renormalise p_r over them (with gradient).
        with record_function("rag_sequence/retrieve"):
            rows, log_prior = prior_top_k(retriever, batch.queries, self.top_k)  # [B, K], [B, K]
        # 2. Score the answer under every retrieved passage (with gradient).
        with record_function("rag_sequence/score"):
            seq_loglik = generator.sequence_logprob(batch.queries, batch.kind, retriever.passages(rows),
                                                    batch.answers)               # [B, K]
        # 3. Marginalise over the K passages.
        with record_function("rag_sequence/marginalise"):
            loss = rag_sequence_nll(log_prior, seq_loglik).mean()
        return loss, {"loss": loss.item(), "prior_top1": log_prior.exp().max(-1).values.mean().item()}
